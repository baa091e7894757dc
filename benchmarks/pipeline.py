"""Measure the whole collector against references measured in the same run, on the same rows.

    python benchmarks/pipeline.py [--flavour tsl|apache] [--dsn DSN] [--seconds 20] [--connections 1,2,4]

The collector runs as users run it (``collector run``: a supervisor, a feed
and a writer process per connection) against the simulator in its own process,
in its replay mode (pre-serialized states, so that serving costs next to
nothing and the collector, not the simulator, is measured), streaming 600
``full`` + 204 ``ltpc`` keys into a fresh database of a local TimescaleDB
(``scripts/timescaledb-local``, or ``--dsn``). For 1, 2 and 4 connections it
measures the maximum rate, then fixed rates (2 000 ticks/s and half the
maximum); then, with 2 connections, an idle collector (connected, the market
quiet), twice the maximum for a while and the time to catch up, and a
catch-up: a journal of a million ticks written while the database was away,
drained by the writers. CPU time is split per process kind (feed, writer,
supervisor).

The ceiling is the database server itself: the server-side binary
``COPY ticks FROM '<file>' (FORMAT binary)`` of the same rows, in one backend and
in two at once, with no client at all. The file must be readable by the
server: the benchmark finds a folder both see (a local server's chroot under
``COLLECTOR_TSDB_ROOT``, or the same /tmp); for a server elsewhere (``--dsn``
to another machine) there is none, and the ceiling falls back to ``COPY FROM
STDIN`` of the same bytes, pre-encoded, which adds the network and says so.
Other references, same run, same rows: raw ``copy_records_to_table`` of
pre-built rows (asyncpg's own encoding), one INSERT and commit per tick, and
decoding with ``MessageToDict`` (what the official SDK does per frame) against
ours (which writes the COPY rows as it decodes). ``export``: ``collector export``
of a million ticks, its rows/s and peak memory with references of its own
(benchmarks/export_replay.py).

Prints the tables, writes ``benchmarks/results/latest.json`` (and a dated
copy) and, with matplotlib installed (``pip install -e '.[bench]'``),
``benchmarks/results/latest.png``. Asserts nothing: machines are noisy, so
read the ratios. ``--scenarios`` runs a part (e.g. ``idle,2000``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.export_replay import bench_export  # noqa: E402
from benchmarks.export_replay import report as export_report  # noqa: E402
from collector.core.decode import decode_rows  # noqa: E402
from collector.core.pgcopy import HEADER, TRAILER, tick_from_row  # noqa: E402
from collector.core.records import TICK_COLUMNS  # noqa: E402
from collector.core.sequencer import TickSequencer  # noqa: E402
from collector.db.migrate import migrate  # noqa: E402
from collector.journal.appender import JournalAppender  # noqa: E402
from collector.journal.format import FRAME  # noqa: E402
from collector.options import JournalOptions  # noqa: E402
from collector.proto import MarketDataFeedV3_pb2 as pb  # noqa: E402
from collector.simulator.market import SimMarket, generate_master  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STOCKS = 200  # the simulator's master: 672 NSE_FO and 204 NSE_EQ/NSE_INDEX keys
FULL_KEYS, LTPC_KEYS = 600, 204
ALWAYS_OPEN = '{"*": {"open": "00:00", "close": "24:00", "days": [0, 1, 2, 3, 4, 5, 6]}}'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def universe() -> dict[str, list[str]]:
    rows = generate_master(STOCKS)
    fo = sorted(r["instrument_key"] for r in rows if r["instrument_key"].startswith("NSE_FO"))
    eq = sorted(r["instrument_key"] for r in rows if r["instrument_key"].startswith(("NSE_EQ", "NSE_INDEX")))
    return {"full": fo[:FULL_KEYS], "ltpc": eq[:LTPC_KEYS]}


# -- references ---------------------------------------------------------------------------


def mix_frames(n_frames: int, per_frame: int = 100) -> list[bytes]:
    """Live frames of the benchmark's mix, as the simulator builds them."""
    market = SimMarket(generate_master(STOCKS), seed=1)
    u = universe()
    keys = [(k, "full") for k in u["full"]] + [(k, "ltpc") for k in u["ltpc"]]
    now = int(time.time() * 1000)
    out = []
    for i in range(n_frames):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now + i)
        start = (i * per_frame) % len(keys)
        for key, mode in (keys + keys)[start : start + per_frame]:
            market.fill(msg.feeds[key], market.tick(key, now + i), mode)  # type: ignore[arg-type]
        out.append(msg.SerializeToString())
    return out


def cpu_time() -> float:
    return time.process_time()


def received_us() -> int:
    return time.time_ns() // 1000


def bench_decode(frames: list[bytes]) -> dict[str, float]:
    """Ours (decoding into COPY rows, what a writer does) against MessageToDict, per core."""
    now = received_us()
    best_ours = best_dict = float("inf")
    ticks = sum(len(decode_rows(f, now).ticks) for f in frames)
    for _ in range(3):  # best of three: noise only ever adds time
        t = cpu_time()
        for f in frames:
            decode_rows(f, now)
        best_ours = min(best_ours, cpu_time() - t)
        t = cpu_time()
        for f in frames:
            msg = pb.FeedResponse()
            msg.ParseFromString(f)
            MessageToDict(msg)
        best_dict = min(best_dict, cpu_time() - t)
    return {
        "ticks": ticks,
        "ours_ticks_per_s": ticks / best_ours,
        "message_to_dict_ticks_per_s": ticks / best_dict,
        "ratio": best_dict / best_ours,
    }


def copy_rows(frames: list[bytes]) -> list[bytes]:
    """The frames' ticks as a writer stores them: binary COPY rows, sequenced."""
    seq = TickSequencer()
    now = received_us()
    return [row for f in frames for row in seq.rows(decode_rows(f, now).ticks)[0]]


async def server_folder(conn: asyncpg.Connection) -> tuple[Path, str] | None:
    """A folder the server reads as ``server path`` and we write as ``local path``, if any.

    The local servers run in chroots (``COLLECTOR_TSDB_ROOT/<flavour>``): their
    /tmp is ours under the chroot. A server on this machine without a chroot
    shares our /tmp. A remote server shares nothing: None.
    """
    top = Path(os.environ.get("COLLECTOR_TSDB_ROOT", "/var/tmp/collector-timescaledb"))
    candidates = [(top / flavour / "tmp", "/tmp") for flavour in ("tsl", "apache")]
    candidates.append((Path("/tmp"), "/tmp"))
    for local, remote in candidates:
        if not local.is_dir():
            continue
        token = uuid.uuid4().hex
        probe = local / f"collector-bench-probe-{token}"
        try:
            probe.write_text(token)
            probe.chmod(0o644)
            seen = await conn.fetchval("SELECT pg_read_file($1)", f"{remote}/{probe.name}")
        except (OSError, asyncpg.PostgresError):
            seen = None
        finally:
            probe.unlink(missing_ok=True)
        if seen == token:
            return local, remote
    return None


async def bench_storage(dsn: str, frames: list[bytes]) -> dict[str, Any]:
    """The database references: the server's own COPY of a file (the ceiling), and clients."""
    rows = copy_rows(frames)
    stream = b"".join((HEADER, *rows, TRAILER))
    records = [tick_from_row(r) for r in rows]
    out: dict[str, Any] = {"rows": len(rows)}
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    conn = conns[0]
    try:
        folder = await server_folder(conn)
        if folder is not None:
            local, remote = folder
            path = local / f"collector-bench-{uuid.uuid4().hex}.copy"
            path.write_bytes(stream)
            path.chmod(0o644)
            server_path = f"{remote}/{path.name}"

            async def copy(c: asyncpg.Connection) -> None:
                await c.execute(
                    f"COPY ticks ({', '.join(TICK_COLUMNS)}) FROM '{server_path}' (FORMAT binary)"
                )

            out["ceiling"] = "server-side COPY FROM file (FORMAT binary)"
        else:
            path = None

            async def copy(c: asyncpg.Connection) -> None:
                await c.copy_to_table(
                    "ticks", source=memoryview(stream), columns=TICK_COLUMNS, format="binary"
                )

            out["ceiling"] = (
                "COPY FROM STDIN of pre-encoded rows (no folder the server reads: remote server?)"
            )
        try:
            for backends, key in ((1, "server_copy_rows_per_s"), (2, "server_copy_2_rows_per_s")):
                best = 0.0
                for _ in range(2):
                    await conn.execute("TRUNCATE ticks")
                    await conn.execute("CHECKPOINT")
                    started = time.perf_counter()
                    await asyncio.gather(*(copy(c) for c in conns[:backends]))
                    best = max(best, backends * len(rows) / (time.perf_counter() - started))
                out[key] = best
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        await conn.execute("TRUNCATE ticks")
        started = time.perf_counter()
        for i in range(0, len(records), 10_000):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "ticks", records=records[i : i + 10_000], columns=TICK_COLUMNS
                )
        out["copy_rows_per_s"] = len(rows) / (time.perf_counter() - started)
        await conn.execute("TRUNCATE ticks")
        few = records[:3000]
        placeholders = ", ".join(f"${i + 1}" for i in range(len(TICK_COLUMNS)))
        sql = f"INSERT INTO ticks ({', '.join(TICK_COLUMNS)}) VALUES ({placeholders})"
        started = time.perf_counter()
        for row in few:
            async with conn.transaction():
                await conn.execute(sql, *row)
        out["insert_commit_rows_per_s"] = len(few) / (time.perf_counter() - started)
        await conn.execute("TRUNCATE ticks")
    finally:
        for c in conns:
            await c.close()
    return out


# -- the collector ------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def histogram(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for (n, ls), v in samples.items():
        if n == f"{name}_bucket":
            le = float(dict(ls)["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Quantile ``q`` of what was observed in between, interpolated inside its bucket.

    The same estimate as PromQL's ``histogram_quantile``: linear between the
    bucket's bounds, so a figure is never finer than the buckets it comes from.
    """
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    count = delta.get(float("inf"), 0.0)
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le in sorted(delta):
        if delta[le] >= rank:
            if le == float("inf"):
                return lower  # past the last finite bucket: its bound is all we know
            inside = delta[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, delta[le]
    return float("inf")


def highest(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound of the highest bucket that got an observation in between: the maximum."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    top = delta.get(float("inf"), 0.0)
    if top <= 0:
        return None
    for le in sorted(delta):
        if delta[le] >= top:
            return le
    return float("inf")


def sim_stats(port: int) -> dict[str, Any]:
    """The simulator's counts; a saturated simulator answers late, so ask patiently."""
    for attempt in range(5):
        try:
            stats: dict[str, Any] = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/simulator/stats", timeout=30).read()
            )
            return stats
        except OSError:
            if attempt == 4:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


KINDS = ("feed", "writer", "supervisor")


def process_kind(pid: int) -> str:
    """feed, writer or supervisor, from the command line ``collector run`` gave the process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "supervisor"
    if ".feed.process" in cmdline:
        return "feed"
    if ".writer.process" in cmdline or ".sink.process" in cmdline:
        return "writer"
    return "supervisor"


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far, per process kind."""
    used = dict.fromkeys(KINDS, 0.0)
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[process_kind(pid)] += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return used


def peak_rss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


@dataclass
class Run:
    scenario: str
    connections: int
    asked_ticks_per_s: float
    seconds: float
    sent_ticks_per_s: float = 0.0
    committed_ticks_per_s: float = 0.0
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    cpu_s_per_million_ticks: float = 0.0
    cpu_s_per_million_by_kind: dict[str, float] = field(default_factory=dict)
    cpu_percent_by_kind: dict[str, float] = field(default_factory=dict)  # of one core, over the run
    peak_rss_mib_summed: float = 0.0
    journal_bytes_max: float = 0.0
    reconnects: float = 0.0
    catch_up_s: float | None = None
    all_committed: bool | None = None
    processes: int = 0
    notes: list[str] = field(default_factory=list)


class Harness:
    """One simulator process, one collector process tree, one fresh database per run."""

    def __init__(self, admin_dsn: str, workdir: Path) -> None:
        self.admin = admin_dsn
        self.workdir = workdir

    async def fresh_database(self) -> str:
        name = "bench_" + uuid.uuid4().hex[:8]
        conn = await asyncpg.connect(self.admin)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        dsn = self.admin.rsplit("/", 1)[0] + "/" + name
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        return dsn

    async def drop(self, dsn: str) -> None:
        conn = await asyncpg.connect(self.admin)
        await conn.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
        await conn.close()

    def _start(
        self, scenario: str, connections: int, rate: float, dsn: str, journal: Path
    ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int, int, Path]:
        """The simulator and ``collector run``: (simulator, collector, its port, metrics port, log)."""
        sim_port, metrics_port = free_port(), free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "collector", "simulate", "--port", str(sim_port), "--rate", str(rate),
             "--stocks", str(STOCKS), "--max-connections", "5", "--replay-states", "16"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
            "COLLECTOR_DATABASE_URL": dsn,
            "COLLECTOR_UPSTOX_API_URL": f"http://127.0.0.1:{sim_port}",
            "COLLECTOR_UPSTOX_TOKEN": "sim-token",
            "COLLECTOR_SUBSCRIPTIONS": json.dumps(universe()),
            "COLLECTOR_CONNECTIONS": str(connections),
            "COLLECTOR_UPSTOX_PLUS": "true" if connections > 2 else "false",
            "COLLECTOR_METRICS_PORT": str(metrics_port),
            "COLLECTOR_JOURNAL_DIR": str(journal),
            "COLLECTOR_MARKET_HOURS": ALWAYS_OPEN,
            "COLLECTOR_CANDLE_REFRESH_INTERVAL_S": "60",
        }
        slug = "".join(ch if ch.isalnum() else "-" for ch in scenario)
        path = self.workdir / f"{slug}-{connections}.log"
        with path.open("wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"], cwd=self.workdir, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return sim, collector, sim_port, metrics_port, path

    @staticmethod
    def _stop(sim: subprocess.Popen[bytes], collector: subprocess.Popen[bytes]) -> None:
        collector.terminate()
        try:
            collector.wait(60)
        except subprocess.TimeoutExpired:
            collector.kill()
        sim.terminate()
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            # Seen once at 200 000 ticks/s asked: not a figure we measure, so do not lose the run.
            print("  the simulator did not stop within 30 s of SIGTERM: killed", flush=True)
            sim.kill()
            sim.wait()

    async def run(
        self, scenario: str, connections: int, rate: float, seconds: float, *, overload: bool = False
    ) -> Run:
        dsn = await self.fresh_database()
        journal = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=self.workdir))
        sim, collector, sim_port, metrics_port, log = self._start(scenario, connections, rate, dsn, journal)
        result = Run(scenario, connections, rate, seconds)
        try:
            # Started: something committed (at rate 0, the subscription's snapshot).
            deadline = time.monotonic() + 90
            while total(scrape(metrics_port), "collector_rows_written_total", table="ticks") < (
                1000 if rate else 1
            ):
                if time.monotonic() > deadline or collector.poll() is not None:
                    raise RuntimeError(f"{scenario}: the collector never committed (see {log})")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # warm: batches at their working size
            pids = process_tree(collector.pid)
            stats0 = sim_stats(sim_port)
            m0, cpu0, t0 = scrape(metrics_port), cpu_seconds(pids), time.monotonic()
            journal_max = 0.0
            while time.monotonic() - t0 < seconds:
                # The journal's size from the disk, not from a scrape: a scrape costs the
                # supervisor CPU, which an idle collector's figures would mostly be.
                await asyncio.sleep(1)
                journal_max = max(journal_max, folder_bytes(journal))
            m1, cpu1, t1 = scrape(metrics_port), cpu_seconds(pids), time.monotonic()
            stats1 = sim_stats(sim_port)
            elapsed = t1 - t0
            committed = total(m1, "collector_rows_written_total", table="ticks") - total(
                m0, "collector_rows_written_total", table="ticks"
            )
            result.sent_ticks_per_s = (stats1["ticks_sent"] - stats0["ticks_sent"]) / elapsed
            result.committed_ticks_per_s = committed / elapsed
            h0 = histogram(m0, "collector_receive_to_commit_seconds")
            h1 = histogram(m1, "collector_receive_to_commit_seconds")
            result.p50_s, result.p99_s, result.max_s = (
                quantile(h0, h1, 0.5),
                quantile(h0, h1, 0.99),
                highest(h0, h1),
            )
            used = {k: cpu1[k] - cpu0[k] for k in KINDS}
            result.cpu_s_per_million_ticks = sum(used.values()) / max(committed, 1) * 1e6
            result.cpu_s_per_million_by_kind = {k: v / max(committed, 1) * 1e6 for k, v in used.items()}
            result.cpu_percent_by_kind = {k: 100 * v / elapsed for k, v in used.items()}
            result.processes = len(pids)
            if overload:
                # The load falls: everything read must be committed, once.
                urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/simulator/fault?kind=rate&arg=0").read()
                falls = time.monotonic()
                await asyncio.sleep(2)
                last = -1.0
                while time.monotonic() - falls < 600:
                    m = scrape(metrics_port)
                    journal_max = max(journal_max, folder_bytes(journal))
                    now = total(m, "collector_rows_written_total", table="ticks")
                    if total(m, "collector_journal_lag_bytes") == 0 and now == last:
                        break
                    last = now
                    await asyncio.sleep(1)
                result.catch_up_s = time.monotonic() - falls
                conn = await asyncpg.connect(dsn)
                stored = await conn.fetchval("SELECT count(*) FROM ticks WHERE NOT snapshot")
                await conn.close()
                sent_all = sim_stats(sim_port)
                result.all_committed = stored == sent_all["ticks_sent"]
                if not result.all_committed:
                    result.notes.append(f"stored {stored} live ticks of {sent_all['ticks_sent']} sent")
            result.peak_rss_mib_summed = peak_rss_mib(process_tree(collector.pid))
            result.journal_bytes_max = journal_max
            result.reconnects = total(scrape(metrics_port), "collector_feed_reconnects_total")
        finally:
            self._stop(sim, collector)
            shutil.rmtree(journal, ignore_errors=True)
            await self.drop(dsn)
        return result

    async def catch_up(self, connections: int, frames: list[bytes], ticks: int) -> Run:
        """A journal of ``ticks`` written while the database was away, then drained.

        The journals are written as the feeds write them (one record per frame,
        the same frames over and over), then the collector starts against a quiet
        market and its writers drain them: committed rows per second from the
        first commit until all are in, and every tick counted in the database.
        """
        dsn = await self.fresh_database()
        journal = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=self.workdir))
        per_frame = [len(decode_rows(f, received_us()).ticks) for f in frames]
        written = 0
        for c in range(connections):
            options = JournalOptions(fsync="never", fsync_interval_s=1.0, segment_bytes=64 * 1024 * 1024)
            with JournalAppender(journal / str(c), options) as writer:
                i = 0
                while written < ticks * (c + 1) // connections:
                    writer.append(FRAME, frames[i % len(frames)])
                    written += per_frame[i % len(frames)]
                    i += 1
        result = Run("catch-up", connections, 0.0, 0.0)
        result.notes.append(f"{written:,} ticks in {folder_bytes(journal) / 1e6:.0f} MB of journal")
        sim, collector, _, metrics_port, log = self._start("catch-up", connections, 0.0, dsn, journal)
        try:
            deadline = time.monotonic() + 900
            pids: list[int] = []
            first: tuple[float, float, dict[str, float]] | None = None
            while True:
                rows = total(scrape(metrics_port), "collector_rows_written_total", table="ticks")
                now = time.monotonic()
                if first is None and rows > 0:
                    pids = process_tree(collector.pid)
                    first = (now, rows, cpu_seconds(pids))
                if rows >= written:
                    break
                if now > deadline or collector.poll() is not None:
                    raise RuntimeError(f"catch-up: not caught up in time (see {log})")
                await asyncio.sleep(0.2)
            assert first is not None
            t0, rows0, cpu0 = first
            cpu1, elapsed = cpu_seconds(pids), time.monotonic() - t0
            result.seconds = elapsed
            result.committed_ticks_per_s = (rows - rows0) / elapsed
            used = {k: cpu1[k] - cpu0[k] for k in KINDS}
            result.cpu_s_per_million_ticks = sum(used.values()) / max(rows - rows0, 1) * 1e6
            result.cpu_s_per_million_by_kind = {k: v / max(rows - rows0, 1) * 1e6 for k, v in used.items()}
            result.cpu_percent_by_kind = {k: 100 * v / elapsed for k, v in used.items()}
            result.peak_rss_mib_summed = peak_rss_mib(process_tree(collector.pid))
            result.processes = len(pids)
            conn = await asyncpg.connect(dsn)
            stored = await conn.fetchval("SELECT count(*) FROM ticks WHERE NOT snapshot")
            await conn.close()
            result.all_committed = stored == written
            if not result.all_committed:
                result.notes.append(f"stored {stored} live ticks of {written} journaled")
        finally:
            self._stop(sim, collector)
            shutil.rmtree(journal, ignore_errors=True)
            await self.drop(dsn)
        return result


def folder_bytes(path: Path) -> float:
    total_bytes = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_file():
                total_bytes += entry.stat().st_size
    return float(total_bytes)


# -- the run ------------------------------------------------------------------------------


def local_database(flavour: str) -> str:
    script = str(ROOT / "scripts" / "timescaledb-local")
    subprocess.run([script, "--flavour", flavour, "start"], check=True)
    return subprocess.check_output([script, "--flavour", flavour, "dsn"], text=True).strip()


async def server_info(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        return {
            "postgresql": str(await conn.fetchval("SHOW server_version")),
            "timescaledb": str(
                await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            ),
            "license": str(await conn.fetchval("SHOW timescaledb.license")),
        }
    finally:
        await conn.close()


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpus": os.cpu_count(), "cpu": model, "memory_gib": round(int(mem) / 1024**2, 1),
        "python": platform.python_version(), "kernel": platform.release(),
    }  # fmt: skip


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return "> 300 s"
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:.1f}{unit}"


def ceiling(ref: dict[str, Any], connections: int) -> float | None:
    """The server's own COPY rate for as many backends as writers (two at most were measured)."""
    key = "server_copy_rows_per_s" if connections == 1 else "server_copy_2_rows_per_s"
    value = ref.get(key)
    return float(value) if value else None


def split(by_kind: dict[str, float], unit: str = "") -> str:
    return " / ".join(f"{by_kind.get(k, 0.0):.1f}{unit}" for k in KINDS)


def report(data: dict[str, Any]) -> str:
    ref = data.get("references", {})
    lines = [
        f"Machine: {data['machine']['cpus']} CPUs ({data['machine']['cpu']}), {data['machine']['memory_gib']} GiB; "
        f"TimescaleDB {data['server']['timescaledb']} ({data['server']['license']}) on PostgreSQL "
        f"{data['server']['postgresql']}; {data['when']}",
        f"Command: {data['command']}",
    ]
    if ref:
        lines += [
            "",
            "References (same run, same rows):",
            f"  ceiling: {ref['ceiling']}",
            f"    one backend                          : {ref['server_copy_rows_per_s']:>10,.0f} rows/s",
            f"    two backends at once                 : {ref['server_copy_2_rows_per_s']:>10,.0f} rows/s",
            f"  asyncpg copy_records_to_table, 10k     : {ref['copy_rows_per_s']:>10,.0f} rows/s",
            f"  one INSERT + commit per tick           : {ref['insert_commit_rows_per_s']:>10,.0f} rows/s",
            f"  decode into COPY rows, ours            : {ref['ours_ticks_per_s']:>10,.0f} ticks/s per core",
            f"  decode, MessageToDict (official SDK)   : {ref['message_to_dict_ticks_per_s']:>10,.0f} ticks/s per core"
            f"  (ours is {ref['ratio']:.1f}x)",
        ]
    lines += [
        "",
        "x ceiling: committed rows/s over the server's own COPY with as many backends as writers (2 at most).",
        "CPU-s/M: CPU seconds per million ticks committed, all collector processes; then feed / writer / supervisor.",
        "",
        "| scenario | conns | asked/s | committed/s | x ceiling | p50 | p99 | max (bucket) | CPU-s/M | feed / writer / supervisor | RSS MiB (sum) | journal MB | reconnects |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        if r["scenario"] in ("idle", "catch-up"):
            continue
        top = ceiling(ref, r["connections"])
        lines.append(
            f"| {r['scenario']} | {r['connections']} | {r['asked_ticks_per_s']:,.0f} | {r['committed_ticks_per_s']:,.0f} | "
            f"{r['committed_ticks_per_s'] / top if top else float('nan'):.2f} | {fmt(r['p50_s'], ' s')} | {fmt(r['p99_s'], ' s')} | "
            f"≤ {fmt(r['max_s'], ' s')} | {r['cpu_s_per_million_ticks']:.1f} | {split(r['cpu_s_per_million_by_kind'])} | "
            f"{r['peak_rss_mib_summed']:.0f} | {r['journal_bytes_max'] / 1e6:.0f} | {r['reconnects']:.0f} |"
        )
    for r in data["runs"]:
        if r["scenario"] == "idle":
            lines.append(
                f"\nidle, {r['connections']} connections (subscribed, the market quiet) for {r['seconds']:.0f} s: "
                f"CPU {sum(r['cpu_percent_by_kind'].values()):.2f} % of a core; feed / writer / supervisor "
                f"{split(r['cpu_percent_by_kind'], ' %')}; RSS {r['peak_rss_mib_summed']:.0f} MiB summed"
            )
        elif r["scenario"] == "catch-up":
            top = ceiling(ref, r["connections"])
            lines.append(
                f"\ncatch-up, {r['connections']} writers: {r['committed_ticks_per_s']:,.0f} rows/s until caught up "
                f"({r['seconds']:.0f} s"
                + (f", {r['committed_ticks_per_s'] / top:.2f}x the ceiling" if top else "")
                + f"); CPU-s/M {r['cpu_s_per_million_ticks']:.1f} ({split(r['cpu_s_per_million_by_kind'])}); "
                f"RSS {r['peak_rss_mib_summed']:.0f} MiB; every tick committed once: {r['all_committed']}"
                + "".join(f"; {n}" for n in r["notes"])
            )
        elif r["catch_up_s"] is not None:
            lines.append(
                f"\n{r['scenario']}: caught up {r['catch_up_s']:.0f} s after the load fell; "
                f"every tick sent committed once: {r['all_committed']}"
                + "".join(f"; {n}" for n in r["notes"])
            )
    if "export" in data:
        lines += ["", export_report(data["export"])]
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ref = data.get("references", {})
    runs = [r for r in data["runs"] if r["scenario"] == "max"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["connections"] for r in runs]
    a.plot(xs, [r["committed_ticks_per_s"] for r in runs], "o-", label="collector, committed")
    catch = [r for r in data["runs"] if r["scenario"] == "catch-up"]
    if catch:
        a.plot([r["connections"] for r in catch], [r["committed_ticks_per_s"] for r in catch], "s",
               c="tab:green", label="catch-up from the journal")  # fmt: skip
    if ref:
        a.axhline(ref["server_copy_2_rows_per_s"], ls="--", c="black", label="server's own COPY, 2 backends")
        a.axhline(ref["server_copy_rows_per_s"], ls="--", c="grey", label="server's own COPY, 1 backend")
        a.axhline(ref["copy_rows_per_s"], ls=":", c="tab:red", label="asyncpg copy_records_to_table")
    a.set(
        xlabel="connections (a feed and a writer process each)",
        ylabel="ticks/s",
        title="Throughput at maximum rate",
    )
    a.set_xticks(xs)
    a.set_ylim(bottom=0)
    a.legend(fontsize=7)
    fixed = [r for r in data["runs"] if r["scenario"] not in ("max", "idle", "catch-up")]
    fixed = [r for r in fixed if r["cpu_s_per_million_by_kind"]]
    labels = [f"{r['scenario']}\n{r['connections']}c" for r in fixed]
    bottom = [0.0] * len(fixed)
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange", "tab:grey"), strict=True):
        values = [r["cpu_s_per_million_by_kind"].get(kind, 0.0) for r in fixed]
        b.bar(range(len(fixed)), values, bottom=bottom, color=colour, label=kind)
        bottom = [x + y for x, y in zip(bottom, values, strict=True)]
    b.set_xticks(range(len(fixed)), labels, fontsize=7)
    b.set(ylabel="CPU seconds per million ticks", title="CPU per tick, by process kind")
    b.legend(fontsize=7)
    fig.suptitle(
        f"collector on {data['machine']['cpus']} CPUs, TimescaleDB {data['server']['timescaledb']} "
        f"on PostgreSQL {data['server']['postgresql'].split()[0]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


SCENARIOS = ("references", "max", "2000", "half", "idle", "overload", "catch-up", "export")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flavour", default="tsl", choices=("tsl", "apache"))
    parser.add_argument("--dsn", help="superuser DSN of a TimescaleDB (instead of scripts/timescaledb-local)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", default="1,2,4")
    parser.add_argument(
        "--max-rate", type=float, default=200_000.0, help="what 'maximum' asks the simulator for"
    )
    parser.add_argument("--catch-up-ticks", type=int, default=1_000_000)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"a part of {','.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    wanted = set(args.scenarios.split(","))
    if wanted - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(wanted - set(SCENARIOS)))}")
    admin = args.dsn or await asyncio.to_thread(local_database, args.flavour)
    workdir = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    harness = Harness(admin, workdir)
    conns = [int(c) for c in args.connections.split(",")]
    pair = 2 if 2 in conns else conns[-1]
    data: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": await server_info(admin),
        "command": " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]]),
    }
    frames = mix_frames(1500)
    if "references" in wanted:
        print("references ...", flush=True)
        dsn = await harness.fresh_database()
        try:
            data["references"] = {**bench_decode(frames), **await bench_storage(dsn, frames)}
        finally:
            await harness.drop(dsn)
        ref = data["references"]
        print(
            f"  ceiling {ref['server_copy_rows_per_s']:,.0f} / {ref['server_copy_2_rows_per_s']:,.0f} rows/s "
            f"(1 / 2 backends); decode {ref['ratio']:.1f}x MessageToDict",
            flush=True,
        )
    if "export" in wanted:
        print("export of a million ticks (benchmarks/export_replay.py) ...", flush=True)
        data["export"] = await bench_export(harness.fresh_database, harness.drop)
    runs: list[Run] = []
    capacity: dict[int, float] = {}
    for c in conns if wanted & {"max", "half", "overload"} else []:
        if "max" not in wanted and not ("overload" in wanted and c == pair) and "half" not in wanted:
            continue
        print(f"maximum rate, {c} connection(s) ...", flush=True)
        r = await harness.run("max", c, args.max_rate, args.seconds)
        capacity[c] = r.committed_ticks_per_s
        runs.append(r)
        print(
            f"  {r.committed_ticks_per_s:,.0f} ticks/s committed, {r.cpu_s_per_million_ticks:.1f} CPU-s/M",
            flush=True,
        )
    for c in conns:
        fixed = [("2000/s", 2000.0)] if "2000" in wanted else []
        if "half" in wanted:
            fixed.append(("50% of max", round(capacity[c] / 2, -2)))
        for name, rate in fixed:
            print(f"{name}, {c} connection(s) ...", flush=True)
            r = await harness.run(name, c, rate, args.seconds)
            runs.append(r)
            print(f"  {r.cpu_s_per_million_ticks:.1f} CPU-s/M, p99 {fmt(r.p99_s, ' s')}", flush=True)
    if "idle" in wanted:
        print(f"idle, {pair} connections ...", flush=True)
        r = await harness.run("idle", pair, 0.0, args.seconds)
        runs.append(r)
        print(f"  {split(r.cpu_percent_by_kind, ' %')} of a core (feed / writer / supervisor)", flush=True)
    if "overload" in wanted:
        print(f"2x maximum, {pair} connections, then the load falls ...", flush=True)
        runs.append(
            await harness.run("2x max", pair, round(capacity[pair] * 2, -2), args.seconds, overload=True)
        )
    if "catch-up" in wanted:
        print(f"catch-up of {args.catch_up_ticks:,} journaled ticks, {pair} writers ...", flush=True)
        r = await harness.catch_up(pair, frames, args.catch_up_ticks)
        runs.append(r)
        print(f"  {r.committed_ticks_per_s:,.0f} rows/s", flush=True)
    data["runs"] = [asdict(r) for r in runs]
    text = report(data)
    print()
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for name in ("latest.json", f"{stamp}.json"):
            (RESULTS / name).write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "latest.md").write_text(text + "\n")
        if chart(data, RESULTS / "latest.png"):
            print(f"\nchart: {RESULTS / 'latest.png'}")
        else:
            print("\n(no chart: pip install -e '.[bench]' for matplotlib)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
