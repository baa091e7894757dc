"""Measure the pipeline: decode, sequence+batch, COPY, simulator, end to end.

    python benchmarks/pipeline.py [--dsn postgresql://...] [--seconds 20] [--rate 20000]

Without --dsn it uses scripts/timescaledb-local (started if needed). Prints
figures; asserts nothing (machines are noisy: read the numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from collector.app import run  # noqa: E402
from collector.batch import Batch, Batcher  # noqa: E402
from collector.db.migrate import migrate  # noqa: E402
from collector.decode import decode_frame  # noqa: E402
from collector.metrics import Metrics  # noqa: E402
from collector.proto import MarketDataFeedV3_pb2 as pb  # noqa: E402
from collector.sequencer import TickSequencer  # noqa: E402
from collector.settings import load_settings  # noqa: E402
from collector.simulator.market import SimMarket, generate_master  # noqa: E402
from collector.simulator.server import Simulator  # noqa: E402
from collector.sink.store import BatchStore  # noqa: E402


def frames_for(mode: str, n_frames: int, per_frame: int = 100) -> list[bytes]:
    market = SimMarket(generate_master(200), seed=1)
    keys = [k for k in market.instruments if k.startswith("NSE_FO")][:per_frame]
    out = []
    now = int(time.time() * 1000)
    for i in range(n_frames):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now + i)
        for key in keys:
            market.fill(msg.feeds[key], market.tick(key, now + i), mode)  # type: ignore[arg-type]
        out.append(msg.SerializeToString())
    return out


def bench_decode() -> None:
    print("decode (frames of 100 instruments, one core):")
    for mode in ("ltpc", "option_greeks", "full", "full_d30"):
        data = frames_for(mode, 200)
        now = datetime.now(UTC)
        start = time.perf_counter()
        ticks = 0
        for _ in range(3):
            for d in data:
                ticks += len(decode_frame(d, now).ticks)
        elapsed = time.perf_counter() - start
        size = statistics.mean(len(d) for d in data) / 100
        print(f"  {mode:14s} {ticks / elapsed:10,.0f} ticks/s   {size:6.0f} bytes/tick on the wire")


def bench_sequence_batch() -> None:
    data = frames_for("full", 300)
    now = datetime.now(UTC)
    frames = [decode_frame(d, now) for d in data]
    seq = TickSequencer()
    batcher = Batcher(max_batch_rows=5000, flush_interval_s=0.5)
    start = time.perf_counter()
    n = 0
    for f in frames:
        ticks = seq.process(f.ticks)
        batcher.add(0.0, ticks, f.bars)
        n += len(ticks)
        if batcher.full():
            batcher.seal()
    elapsed = time.perf_counter() - start
    print(f"sequencer + batcher (full mode): {n / elapsed:,.0f} ticks/s")


async def bench_copy(dsn: str) -> None:
    data = frames_for("full", 500)
    now = datetime.now(UTC)
    ticks = [t for d in data for t in decode_frame(d, now).ticks]
    conn = await asyncpg.connect(dsn)
    store = BatchStore(Metrics(CollectorRegistry()))
    for size in (1000, 5000):
        batches = [Batch(uuid.uuid4(), ticks=ticks[i : i + size]) for i in range(0, len(ticks), size)]
        start = time.perf_counter()
        for b in batches:
            await store.write(conn, b)
        elapsed = time.perf_counter() - start
        print(f"COPY + ledger commit, full-mode ticks, batches of {size}: {len(ticks) / elapsed:,.0f} rows/s "
              f"({elapsed / len(batches) * 1000:.1f} ms per batch)")  # fmt: skip
    await conn.close()


async def bench_simulator(seconds: float) -> None:
    sim = Simulator(rate=1_000_000, stocks=200)
    market = sim.market
    keys = list(market.instruments)[:2000]
    for mode in ("ltpc", "full"):
        start = time.perf_counter()
        n = 0
        now = int(time.time() * 1000)
        while time.perf_counter() - start < seconds / 4:
            msg = pb.FeedResponse(type=pb.live_feed, currentTs=now)
            for key in keys[:500]:
                market.fill(msg.feeds[key], market.tick(key, now), mode)  # type: ignore[arg-type]
            msg.SerializeToString()
            n += 500
        print(f"simulator tick generation, {mode}: {n / (time.perf_counter() - start):,.0f} ticks/s")


def spawn_simulator(rate: float, stocks: int = 200) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "--port", str(port), "--rate", str(rate),
         "--stocks", str(stocks)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


async def bench_simulator_serving(seconds: float, rate: float, mode: str) -> None:
    """`collector simulate` in its own process; this process reads and decodes."""
    import json
    import urllib.request

    from websockets.asyncio.client import connect

    proc, base = spawn_simulator(rate, stocks=300)
    try:
        for _ in range(100):
            try:
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(
                        urllib.request.Request(
                            base + "/v3/feed/market-data-feed/authorize",
                            headers={"Authorization": "Bearer sim-token"},
                        ),
                        timeout=2,
                    ).read()
                )
                break
            except OSError:
                await asyncio.sleep(0.1)
        uri = json.loads(body)["data"]["authorized_redirect_uri"]
        master = json.loads(
            __import__("gzip").decompress(
                await asyncio.to_thread(
                    lambda: urllib.request.urlopen(
                        base + "/market-quote/instruments/exchange/complete.json.gz", timeout=5
                    ).read()
                )
            )
        )
        keys = [r["instrument_key"] for r in master][:1500]
        async with connect(uri, max_size=None) as ws:
            await ws.send(
                json.dumps(
                    {"guid": "b", "method": "sub", "data": {"mode": mode, "instrumentKeys": keys}}
                ).encode()
            )
            now = datetime.now(UTC)
            n = 0
            start = None
            async for message in ws:
                if isinstance(message, bytes):
                    frame = decode_frame(message, now)
                    if frame.kind == "live_feed":
                        if start is None:
                            start = time.perf_counter()
                        n += len(frame.ticks)
                if start is not None and time.perf_counter() - start > seconds:
                    break
        elapsed = time.perf_counter() - start  # type: ignore[operator]
        print(
            f"simulator serving {mode} (own process), asked for {rate:,.0f}: {n / elapsed:,.0f} ticks/s received"
        )
    finally:
        proc.terminate()
        proc.wait()


def get_json(url: str) -> dict:  # type: ignore[type-arg]
    import json
    import urllib.request

    return json.loads(urllib.request.urlopen(url, timeout=5).read())  # type: ignore[no-any-return]


async def bench_end_to_end(dsn: str, seconds: float, rate: float, full_keys: int = 600) -> None:
    """The simulator in its own process; this process runs only the collector."""
    proc, url = spawn_simulator(rate)
    try:
        for _ in range(100):
            try:
                master = await asyncio.to_thread(get_json, url + "/simulator/stats")
                break
            except OSError:
                await asyncio.sleep(0.1)
        sim = Simulator(stocks=200)  # same generated master as the subprocess: pick keys from it
        fo = sorted(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        eq = sorted(k for k in sim.market.instruments if k.startswith(("NSE_EQ", "NSE_INDEX")))
        registry = CollectorRegistry()
        settings = load_settings(
            database_url=dsn, upstox_api_url=url, upstox_token="sim-token",
            subscriptions={"full": fo[:full_keys], "ltpc": eq}, spool_dir=Path(tempfile.mkdtemp()),
            candle_refresh_interval_s=10,
        )  # fmt: skip
        stop = asyncio.Event()
        app = asyncio.create_task(run(settings, stop=stop, registry=registry, serve_metrics=False))

        def rows() -> float:
            return registry.get_sample_value("collector_rows_written_total", {"table": "ticks"}) or 0.0

        while rows() == 0:  # noqa: ASYNC110 - polling a metric, there is no event to wait on
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        master = await asyncio.to_thread(get_json, url + "/simulator/stats")
        start, r0, s0, cpu0 = time.perf_counter(), rows(), master["ticks_sent"], time.process_time()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - start
        master = await asyncio.to_thread(get_json, url + "/simulator/stats")
        r1, s1, cpu = rows(), master["ticks_sent"], time.process_time() - cpu0
        hist: dict[float, float] = {}
        for metric in registry.collect():
            if metric.name == "collector_receive_to_commit_seconds":
                for sample in metric.samples:
                    if sample.name.endswith("_bucket"):
                        hist[float(sample.labels["le"])] = sample.value
        total = hist[float("inf")]

        def quantile(q: float) -> float:
            return next(le for le, c in sorted(hist.items()) if c >= q * total)

        spool = registry.get_sample_value("collector_spool_rows") or 0
        stop.set()
        await app
    finally:
        proc.terminate()
        proc.wait()
    print(
        f"end to end, {full_keys} full + {len(eq)} ltpc keys, simulator (own process) asked {rate:,.0f} ticks/s:"
    )
    print(f"  sent {(s1 - s0) / elapsed:,.0f} ticks/s, committed {(r1 - r0) / elapsed:,.0f} rows/s, "
          f"collector CPU {cpu / elapsed * 100:.0f}% of one core, spool rows at the end {spool:,.0f}")  # fmt: skip
    print(
        f"  receive->commit latency (oldest row per batch): p50 <= {quantile(0.5)}s, p99 <= {quantile(0.99)}s"
    )
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


async def fresh_database(admin_dsn: str) -> str:
    name = "bench_" + uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    return dsn


def local_database() -> str:
    script = str(ROOT / "scripts" / "timescaledb-local")
    subprocess.run([script, "start"], check=True)
    return subprocess.check_output([script, "dsn"], text=True).strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="superuser DSN of a TimescaleDB (default: scripts/timescaledb-local)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20_000.0)
    args = parser.parse_args()
    admin = args.dsn or await asyncio.to_thread(local_database)
    bench_decode()
    bench_sequence_batch()
    await bench_simulator(args.seconds)
    await bench_simulator_serving(args.seconds / 2, 60_000, "ltpc")
    await bench_simulator_serving(args.seconds / 2, 100_000, "ltpc")
    await bench_simulator_serving(args.seconds / 2, 60_000, "full")
    await bench_copy(await fresh_database(admin))
    for rate in (args.rate / 2, args.rate):
        await bench_end_to_end(await fresh_database(admin), args.seconds, rate)


if __name__ == "__main__":
    asyncio.run(main())
