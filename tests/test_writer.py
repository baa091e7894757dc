"""The writer on a real TimescaleDB: COPY round trip, ledger, dead letters, spool."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from collector.decode import decode_frame
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.records import TICK_COLUMNS, Frame, Tick
from collector.simulator.market import SimMarket, generate_master
from tests.helpers import sample, until
from tests.pipeline import make_writer


def frames(n_frames: int = 5) -> list[Frame]:
    """Decoded frames of every mode, as the feed would deliver them."""
    market = SimMarket(generate_master(10), seed=5)
    keys = list(market.instruments)
    modes = ["ltpc", "full", "option_greeks", "full_d30"]
    out = []
    now_ms = int(time.time() * 1000)
    for i in range(n_frames):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now_ms + i)
        for j, key in enumerate(keys):
            inst = market.tick(key, now_ms + i)
            market.fill(msg.feeds[key], inst, modes[j % 4])  # type: ignore[arg-type]
        out.append(decode_frame(msg.SerializeToString(), datetime.now(UTC)))
    return out


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@contextlib.asynccontextmanager
async def running(writer):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.close()


async def test_ticks_written_by_copy_come_back_equal(migrated: str, tmp_path: Path) -> None:
    writer, registry, _ = make_writer(migrated, tmp_path)
    sent = frames()
    async with running(writer):
        for f in sent:
            await writer.deliver(f)
        expected = sum(len(f.ticks) for f in sent)
        await until(lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) == expected)
    conn = await asyncpg.connect(migrated)
    try:
        rows = await conn.fetch(f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks")
        bars = await conn.fetchval("SELECT count(*) FROM exchange_bars")
    finally:
        await conn.close()
    stored = {(r["instrument_key"], r["time"]): tuple(r) for r in rows}
    # The writer fills volume; compare everything else field by field.
    for f in sent:
        for t in f.ticks:
            got = Tick(*stored[(t.instrument_key, t.time)])
            for name in TICK_COLUMNS:
                if name != "volume":
                    assert same(getattr(got, name), getattr(t, name)), (name, got, t)
    assert len(rows) == sum(len(f.ticks) for f in sent)
    assert {r["kind"] for r in rows} == {"ltpc", "full", "option_greeks", "full_d30", "index"}
    assert bars > 0


async def test_database_away_spills_to_spool_then_replays_in_order(migrated: str, tmp_path: Path) -> None:
    up = asyncio.Event()

    async def connect() -> asyncpg.Connection:
        if not up.is_set():
            raise ConnectionRefusedError("database away (test)")
        return await asyncpg.connect(migrated)

    writer, registry, spool = make_writer(connect, tmp_path, spill_after_s=0.2, max_batch_rows=50)
    sent = frames(20)
    total = sum(len(f.ticks) for f in sent)
    async with running(writer):
        for f in sent:
            await writer.deliver(f)
            await asyncio.sleep(0.02)
        await until(lambda: spool.rows > 0 and writer._pending_rows == 0, what="spilled")
        assert sample(registry, "collector_database_up") == 0
        assert sample(registry, "collector_spool_bytes") > 0
        up.set()
        await until(lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) == total)
        await until(lambda: spool.rows == 0 and not list(tmp_path.glob("*.spool")))
    assert sample(registry, "collector_replayed_rows_total") > 0
    conn = await asyncpg.connect(migrated)
    try:
        n, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT (instrument_key, time)) FROM ticks"
        )
        order = await conn.fetch("SELECT batch_id FROM ingest_ledger ORDER BY committed_at")
    finally:
        await conn.close()
    assert n == distinct == total
    assert len(order) >= 2


async def test_drain_spills_what_it_cannot_commit(tmp_path: Path) -> None:
    async def connect() -> asyncpg.Connection:
        raise ConnectionRefusedError("database away (test)")

    writer, _, spool = make_writer(connect, tmp_path)
    for f in frames(3):
        await writer.deliver(f)
    assert await writer.drain(0.5) is False
    assert spool.rows > 0 and writer._pending_rows == 0 and len(writer._batcher) == 0
    spool.close()


async def test_drain_after_cancel_mid_transaction_commits_everything(migrated: str, tmp_path: Path) -> None:
    writer, _, spool = make_writer(migrated, tmp_path, max_batch_rows=100)
    sent = frames(20)
    task = asyncio.create_task(writer.run())
    for f in sent:
        await writer.deliver(f)
    # Cancel while a batch is being written, as shutdown does.
    await until(lambda: writer._flushing, what="a write in flight")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await writer.drain(30) is True
    assert spool.rows == 0
    conn = await asyncpg.connect(migrated)
    try:
        n, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT (instrument_key, time)) FROM ticks"
        )
    finally:
        await conn.close()
    assert n == distinct == sum(len(f.ticks) for f in sent)
    spool.close()


async def test_memory_stays_bounded_when_the_database_is_slower_than_the_feed(
    migrated: str, tmp_path: Path
) -> None:
    gate = asyncio.Event()

    async def slow_connect() -> asyncpg.Connection:
        await gate.wait()  # a database that cannot keep up (here: not at all, yet)
        return await asyncpg.connect(migrated)

    writer, registry, spool = make_writer(slow_connect, tmp_path, max_batch_rows=50, max_pending_rows=200)
    writer._db_up = True  # it was fine a moment ago
    sent = frames(20)
    async with running(writer):
        for f in sent:
            await writer.deliver(f)
        await until(lambda: spool.rows > 0 and writer._pending_rows <= 200 + 50, what="spilled while up")
        gate.set()
        total = sum(len(f.ticks) for f in sent)
        await until(lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) == total)
    spool.close()
