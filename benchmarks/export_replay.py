"""Measure ``collector export`` and ``collector replay`` against references from the same run.

    python benchmarks/export_replay.py [--flavour tsl|apache] [--dsn DSN] [--ticks 1000000]

A fresh database of a local TimescaleDB gets ``--ticks`` ticks of one IST
trading day, every kind (depth arrays of 5 and 30 levels, NULL where a kind
has no field), 20 ticks to a frame (tests.support.recorded.synthetic). Then:

- **export**: ``collector export --tables ticks`` of that day, as a process:
  rows/s, and its peak RSS (the kernel's high-water mark of the process, from
  wait4). References on the same rows: the database handing them out
  (``COPY ... TO STDOUT`` binary, discarded) and pyarrow writing them
  (the exported table rewritten with zstd from memory);
- **replay**: ``collector replay --speed max`` of the first 200 000 ticks of
  the day into a client that reads every frame (ticks/s, frames/s).
  Reference: reading the same span through the replay's own reader without
  sending (:class:`~collector.replay.recording.Recording`).

Prints a table; :func:`bench_export` is what ``benchmarks/pipeline.py`` calls
for the export line of its output. Asserts nothing: machines are noisy and
this one may be shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from collector.core.span import day_bounds  # noqa: E402
from collector.db.migrate import migrate  # noqa: E402
from tests.support.metrics import Samples, scrape, total  # noqa: E402
from tests.support.recorded import synthetic  # noqa: E402

__all__ = ["bench_export", "bench_replay", "report"]

DAY = date(2026, 11, 27)
REPLAY_TICKS = 200_000


def _env(dsn: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
        "COLLECTOR_DATABASE_URL": dsn,
    }


def _run_measured(args: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """Run a process to its end: (exit status, wall seconds, peak RSS in MiB)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return proc.returncode, took, usage.ru_maxrss / 1024  # KiB on Linux


async def fill(dsn: str, ticks: int) -> None:
    await synthetic(dsn, DAY, 1, ticks, keys=200)  # 40 of them full_d30: within its 50 keys a connection


async def copy_out_rows_per_s(dsn: str) -> float:
    start, end = day_bounds(DAY)
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval("SELECT count(*) FROM ticks WHERE time >= $1 AND time < $2", start, end)
        received = 0

        async def discard(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)

        began = time.perf_counter()
        await conn.copy_from_query(
            "SELECT * FROM ticks WHERE time >= $1 AND time < $2 ORDER BY time", start, end,
            output=discard, format="binary",
        )  # fmt: skip
        took = time.perf_counter() - began
    finally:
        await conn.close()
    return float(n) / took


def arrow_write_rows_per_s(path: Path) -> float:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out = path.with_name("rewrite.parquet")
    began = time.perf_counter()
    pq.write_table(table, out, compression="zstd", row_group_size=100_000)
    took = time.perf_counter() - began
    out.unlink()
    return float(table.num_rows) / took


async def bench_export(
    fresh_database: Callable[[], Awaitable[str]],
    drop: Callable[[str], Awaitable[None]],
    ticks: int = 1_000_000,
) -> dict[str, Any]:
    """Export ``ticks`` ticks of one day as a process; its speed, its memory, and the references."""
    dsn = await fresh_database()
    out = Path(tempfile.mkdtemp(prefix="collector-export-"))
    try:
        await fill(dsn, ticks)
        rc, took, rss = await asyncio.to_thread(
            _run_measured,
            [sys.executable, "-m", "collector", "export", "--from", DAY.isoformat(), "--to", DAY.isoformat(),
             "--out", str(out), "--tables", "ticks", "--progress", "log"],
            _env(dsn),
        )  # fmt: skip
        assert rc == 0, "collector export failed"
        part = out / "table=ticks" / f"day={DAY.isoformat()}" / "part-0.parquet"
        result = {
            "ticks": ticks,
            "export_rows_per_s": ticks / took,
            "export_seconds": took,
            "export_peak_rss_mib": rss,
            "file_mib": part.stat().st_size / 2**20,
            "copy_out_rows_per_s": await copy_out_rows_per_s(dsn),
            "arrow_write_rows_per_s": await asyncio.to_thread(arrow_write_rows_per_s, part),
        }
        return result
    finally:
        await drop(dsn)
        await asyncio.to_thread(shutil.rmtree, out, True)


async def bench_replay(dsn: str) -> dict[str, Any]:
    """Replay the first REPLAY_TICKS ticks of the day at max into a reading client."""
    from websockets.asyncio.client import connect

    from collector.core.requests import encode_request
    from collector.replay.recording import Recording

    conn = await asyncpg.connect(dsn)
    try:
        start, _ = day_bounds(DAY)
        end = await conn.fetchval(
            "SELECT received_at FROM ticks ORDER BY received_at OFFSET $1 LIMIT 1", REPLAY_TICKS
        )
        recording = await Recording.open(conn, start, end)
        began = time.perf_counter()
        frames = 0
        async for _ in recording.frames():
            frames += 1
        read_s = time.perf_counter() - began
        keys = sorted(recording.keys)
        kinds = {k: v[-1] for k, v in recording.keys.items()}
    finally:
        await conn.close()
    port, metrics_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "replay", "--from", start.isoformat(), "--to", end.isoformat(),
         "--speed", "max", "--port", str(port), "--metrics-port", str(metrics_port)],
        env=_env(dsn), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        await _wait_metric(metrics, "collector_replay_span_end_timestamp_seconds")  # the feed port listens
        request = urllib.request.Request(
            base + "/v3/feed/market-data-feed/authorize", headers={"Authorization": "Bearer replay-token"}
        )
        body = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request, timeout=5).read()))
        async with connect(body["data"]["authorized_redirect_uri"], max_size=1 << 24) as ws:
            for mode in ("full", "full_d30", "option_greeks", "ltpc"):
                wanted = [k for k in keys if {"index": "full"}.get(kinds[k], kinds[k]) == mode]
                if wanted:
                    await ws.send(encode_request("sub", wanted, mode))  # type: ignore[arg-type]
            got = 0
            began = 0.0

            async def read() -> None:
                nonlocal got, began
                async for _ in ws:
                    if not began:
                        began = time.perf_counter()
                    got += 1

            reader = asyncio.create_task(read())
            scraped = await _wait_metric(metrics, "collector_replay_finished", timeout_s=600)
            took = time.perf_counter() - began
            reader.cancel()
    finally:
        proc.terminate()
        proc.wait(30)
    feeds_sent = int(total(scraped, "collector_replay_feeds_sent_total"))
    frames_sent = int(total(scraped, "collector_replay_frames_sent_total"))
    return {
        "replay_ticks": feeds_sent,
        "replay_frames": frames_sent,
        "replay_ticks_per_s": feeds_sent / took,
        "replay_frames_per_s": frames_sent / took,
        "read_only_ticks_per_s": feeds_sent / read_s,
        "frames_read": frames,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_metric(url: str, name: str, timeout_s: float = 120) -> Samples:
    """Until ``name`` is above 0 at ``url`` (the replay's /metrics); returns the scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, url)
        if total(samples, name) > 0:
            return samples
        assert time.monotonic() < deadline, f"the replay did not get to {name} in time"
        await asyncio.sleep(0.1)


def local_database(flavour: str) -> str:
    script = str(ROOT / "scripts" / "timescaledb-local")
    subprocess.run([script, "--flavour", flavour, "start"], check=True)
    return subprocess.check_output([script, "--flavour", flavour, "dsn"], text=True).strip()


def report(result: dict[str, Any]) -> str:
    lines = [
        f"export of {result['ticks']:,} ticks (one IST day, one file of {result['file_mib']:.0f} MiB): "
        f"{result['export_rows_per_s']:,.0f} rows/s, peak RSS {result['export_peak_rss_mib']:.0f} MiB",
        f"  references, same rows: the database's binary COPY out {result['copy_out_rows_per_s']:,.0f} rows/s "
        f"(export is {result['export_rows_per_s'] / result['copy_out_rows_per_s']:.2f}x), pyarrow writing them "
        f"{result['arrow_write_rows_per_s']:,.0f} rows/s",
    ]
    if "replay_ticks_per_s" in result:
        lines.append(
            f"replay at max of {result['replay_ticks']:,} ticks in {result['replay_frames']:,} frames: "
            f"{result['replay_ticks_per_s']:,.0f} ticks/s ({result['replay_frames_per_s']:,.0f} frames/s); "
            f"reading them alone: {result['read_only_ticks_per_s']:,.0f} ticks/s"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flavour", default="tsl", choices=("tsl", "apache"))
    parser.add_argument("--dsn", help="superuser DSN of a TimescaleDB (instead of scripts/timescaledb-local)")
    parser.add_argument("--ticks", type=int, default=1_000_000)
    args = parser.parse_args()
    admin = args.dsn or await asyncio.to_thread(local_database, args.flavour)

    async def fresh_database() -> str:
        name = "bench_" + uuid.uuid4().hex[:8]
        conn = await asyncpg.connect(admin)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        dsn = admin.rsplit("/", 1)[0] + "/" + name
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        return dsn

    async def drop(dsn: str) -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
        await conn.close()

    print(f"export of {args.ticks:,} ticks ...", flush=True)
    result = await bench_export(fresh_database, drop, args.ticks)
    print("replay ...", flush=True)
    dsn = await fresh_database()
    try:
        await fill(dsn, max(REPLAY_TICKS * 2, 400_000))
        result.update(await bench_replay(dsn))
    finally:
        await drop(dsn)
    print()
    print(report(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
