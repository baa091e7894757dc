"""Measure the whole collector against references measured in the same run, on the same rows.

    python benchmarks/pipeline.py [--flavour tsl|apache] [--seconds 20] [--connections 1,2,4]

The collector runs as users run it (``collector run``: a supervisor, a feed
and a writer process per connection) against the simulator in its own process,
in its replay mode (pre-serialized states, so that serving costs next to
nothing and the collector, not the simulator, is measured), streaming 600
``full`` + 204 ``ltpc`` keys into a fresh database of a local TimescaleDB
(``scripts/timescaledb-local``). For 1, 2 and 4 connections it measures the
maximum rate, then fixed rates (2 000 ticks/s and half the maximum), then twice
the maximum for a while and the time to catch up. References, in the same run
and on the same rows: raw ``copy_records_to_table`` of pre-built rows, one
INSERT and commit per tick, and decoding with ``MessageToDict`` (what the
official SDK does per frame).

Prints the tables, writes ``benchmarks/results/latest.json`` (and a dated
copy) and, with matplotlib installed (``pip install -e '.[bench]'``),
``benchmarks/results/latest.png``. Asserts nothing: machines are noisy, so
read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
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

from collector.core.decode import decode_frame  # noqa: E402
from collector.core.records import TICK_COLUMNS  # noqa: E402
from collector.core.sequencer import TickSequencer  # noqa: E402
from collector.db.migrate import migrate  # noqa: E402
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


def bench_decode(frames: list[bytes]) -> dict[str, float]:
    now = datetime.now(UTC)
    best_ours = best_dict = float("inf")
    ticks = sum(len(decode_frame(f, now).ticks) for f in frames)
    for _ in range(3):  # best of three: noise only ever adds time
        t = cpu_time()
        for f in frames:
            decode_frame(f, now)
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


async def bench_storage(dsn: str, frames: list[bytes]) -> dict[str, float]:
    now = datetime.now(UTC)
    seq = TickSequencer()
    rows = [t for f in frames for t in seq.process(decode_frame(f, now).ticks)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE ticks")
        started = time.perf_counter()
        for i in range(0, len(rows), 10_000):
            async with conn.transaction():
                await conn.copy_records_to_table("ticks", records=rows[i : i + 10_000], columns=TICK_COLUMNS)
        copy_rate = len(rows) / (time.perf_counter() - started)
        await conn.execute("TRUNCATE ticks")
        few = rows[:3000]
        placeholders = ", ".join(f"${i + 1}" for i in range(len(TICK_COLUMNS)))
        sql = f"INSERT INTO ticks ({', '.join(TICK_COLUMNS)}) VALUES ({placeholders})"
        started = time.perf_counter()
        for row in few:
            async with conn.transaction():
                await conn.execute(sql, *row)
        insert_rate = len(few) / (time.perf_counter() - started)
        await conn.execute("TRUNCATE ticks")
    finally:
        await conn.close()
    return {"rows": len(rows), "copy_rows_per_s": copy_rate, "insert_commit_rows_per_s": insert_rate}


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


def cpu_seconds(pids: list[int]) -> float:
    used = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
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

    async def run(
        self, scenario: str, connections: int, rate: float, seconds: float, *, overload: bool = False
    ) -> Run:
        dsn = await self.fresh_database()
        sim_port, metrics_port = free_port(), free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "collector", "simulate", "--port", str(sim_port), "--rate", str(rate),
             "--stocks", str(STOCKS), "--max-connections", "5", "--replay-states", "16"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        journal = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=self.workdir))
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
        log = (self.workdir / f"{slug}-{connections}.log").open("wb")
        collector = subprocess.Popen(
            [sys.executable, "-m", "collector", "run"],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        result = Run(scenario, connections, rate, seconds)
        try:
            deadline = time.monotonic() + 90
            while total(scrape(metrics_port), "collector_rows_written_total", table="ticks") < 1000:
                if time.monotonic() > deadline or collector.poll() is not None:
                    raise RuntimeError(f"{scenario}: the collector never committed (see {log.name})")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # warm: batches at their working size
            pids = process_tree(collector.pid)
            stats0 = sim_stats(sim_port)
            m0, cpu0, t0 = scrape(metrics_port), cpu_seconds(pids), time.monotonic()
            journal_max = 0.0
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(1)
                journal_max = max(journal_max, total(scrape(metrics_port), "collector_journal_bytes"))
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
            result.cpu_s_per_million_ticks = (cpu1 - cpu0) / max(committed, 1) * 1e6
            result.processes = len(pids)
            if overload:
                # The load falls: everything read must be committed, once.
                urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/simulator/fault?kind=rate&arg=0").read()
                falls = time.monotonic()
                await asyncio.sleep(2)
                last = -1.0
                while time.monotonic() - falls < 600:
                    m = scrape(metrics_port)
                    journal_max = max(journal_max, total(m, "collector_journal_bytes"))
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
            shutil.rmtree(journal, ignore_errors=True)
            await self.drop(dsn)
        return result


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


def report(data: dict[str, Any]) -> str:
    ref = data["references"]
    lines = [
        f"Machine: {data['machine']['cpus']} CPUs ({data['machine']['cpu']}), {data['machine']['memory_gib']} GiB; "
        f"TimescaleDB {data['server']['timescaledb']} ({data['server']['license']}) on PostgreSQL "
        f"{data['server']['postgresql']}; {data['when']}",
        "",
        "References (same run, same rows):",
        f"  raw copy_records_to_table, 10k batches : {ref['copy_rows_per_s']:>10,.0f} rows/s",
        f"  one INSERT + commit per tick           : {ref['insert_commit_rows_per_s']:>10,.0f} rows/s",
        f"  decode, ours                           : {ref['ours_ticks_per_s']:>10,.0f} ticks/s per core",
        f"  decode, MessageToDict (official SDK)   : {ref['message_to_dict_ticks_per_s']:>10,.0f} ticks/s per core"
        f"  (ours is {ref['ratio']:.1f}x)",
        "",
        "| scenario | conns | asked/s | committed/s | x COPY | p50 | p99 | max (bucket) | CPU-s/M | RSS MiB (sum) | journal MB | reconnects |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        lines.append(
            f"| {r['scenario']} | {r['connections']} | {r['asked_ticks_per_s']:,.0f} | {r['committed_ticks_per_s']:,.0f} | "
            f"{r['committed_ticks_per_s'] / ref['copy_rows_per_s']:.2f} | {fmt(r['p50_s'], ' s')} | {fmt(r['p99_s'], ' s')} | "
            f"≤ {fmt(r['max_s'], ' s')} | {r['cpu_s_per_million_ticks']:.1f} | {r['peak_rss_mib_summed']:.0f} | "
            f"{r['journal_bytes_max'] / 1e6:.0f} | {r['reconnects']:.0f} |"
        )
    for r in data["runs"]:
        if r["catch_up_s"] is not None:
            lines.append(
                f"\n{r['scenario']}: caught up {r['catch_up_s']:.0f} s after the load fell; "
                f"every tick sent committed once: {r['all_committed']}"
                + "".join(f"; {n}" for n in r["notes"])
            )
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [r for r in data["runs"] if r["scenario"] == "max"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["connections"] for r in runs]
    a.plot(xs, [r["committed_ticks_per_s"] for r in runs], "o-", label="collector, committed")
    a.axhline(data["references"]["copy_rows_per_s"], ls="--", c="grey", label="raw COPY of pre-built rows")
    a.axhline(
        data["references"]["insert_commit_rows_per_s"], ls=":", c="red", label="INSERT + commit per tick"
    )
    a.set(
        xlabel="connections (a feed and a writer process each)",
        ylabel="ticks/s",
        title="Throughput at maximum rate",
    )
    a.set_xticks(xs)
    a.legend(fontsize=8)
    fixed = [r for r in data["runs"] if r["scenario"] != "max" and r["p99_s"] not in (None, float("inf"))]
    labels = [f"{r['scenario']}\n{r['connections']}c" for r in fixed]
    b.bar(range(len(fixed)), [r["p99_s"] for r in fixed], color="tab:orange")
    b.set_xticks(range(len(fixed)), labels, fontsize=7)
    b.set(ylabel="seconds", title="p99 receive → commit")
    fig.suptitle(f"collector on {data['machine']['cpus']} CPUs, TimescaleDB {data['server']['timescaledb']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flavour", default="tsl", choices=("tsl", "apache"))
    parser.add_argument("--dsn", help="superuser DSN of a TimescaleDB (instead of scripts/timescaledb-local)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", default="1,2,4")
    parser.add_argument(
        "--max-rate", type=float, default=200_000.0, help="what 'maximum' asks the simulator for"
    )
    args = parser.parse_args()
    admin = args.dsn or await asyncio.to_thread(local_database, args.flavour)
    workdir = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    harness = Harness(admin, workdir)
    conns = [int(c) for c in args.connections.split(",")]
    data: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": await server_info(admin),
        "command": " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]]),
    }
    print("references ...", flush=True)
    frames = mix_frames(1500)
    dsn = await harness.fresh_database()
    try:
        data["references"] = {**bench_decode(frames), **await bench_storage(dsn, frames)}
    finally:
        await harness.drop(dsn)
    runs: list[Run] = []
    capacity: dict[int, float] = {}
    for c in conns:
        print(f"maximum rate, {c} connection(s) ...", flush=True)
        r = await harness.run("max", c, args.max_rate, args.seconds)
        capacity[c] = r.committed_ticks_per_s
        runs.append(r)
        print(
            f"  {r.committed_ticks_per_s:,.0f} ticks/s committed, {r.cpu_s_per_million_ticks:.1f} CPU-s/M",
            flush=True,
        )
    for c in conns:
        for name, rate in (("2000/s", 2000.0), ("50% of max", round(capacity[c] / 2, -2))):
            print(f"{name}, {c} connection(s) ...", flush=True)
            runs.append(await harness.run(name, c, rate, args.seconds))
    c = 2 if 2 in conns else conns[-1]
    print(f"2x maximum, {c} connections, then the load falls ...", flush=True)
    runs.append(await harness.run("2x max", c, round(capacity[c] * 2, -2), args.seconds, overload=True))
    data["runs"] = [asdict(r) for r in runs]
    text = report(data)
    print()
    print(text)
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
