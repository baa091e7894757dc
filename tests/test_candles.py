"""Candles (all five levels) against an independent computation from raw ticks."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from collector.db.jobs import Jobs
from collector.metrics import Metrics
from collector.records import Frame, Tick
from tests.helpers import sample, until
from tests.pipeline import make_writer

OPEN = datetime(2026, 11, 20, 3, 45, tzinfo=UTC)  # 09:15 IST
CLOSE = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # 15:30 IST
WIDTHS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}


def make_tick(key: str, kind: str, t: datetime, ltp: float, ltq: int, vtt: int | None, snap: bool) -> Tick:
    rest = [None] * 19
    return Tick(t, key, kind, snap, t, t, ltp, ltq, 0.0, None, vtt, *rest)  # type: ignore[arg-type]


def generate_day(seed: int = 11) -> tuple[list[Frame], list[Tick]]:
    """Live frames for a trading day, with a reconnect in the middle.

    Returns the frames to deliver and the ticks that should be stored (what
    the snapshot rule keeps), computed here independently of the collector.
    """
    rng = random.Random(seed)
    instruments = {"NSE_FO|1": "full", "NSE_FO|2": "full", "NSE_FO|3": "option_greeks", "NSE_EQ|A": "ltpc"}
    state = {k: [100.0 + i * 50, 0] for i, k in enumerate(instruments)}  # ltp, vtt
    frames: list[Frame] = []
    kept: list[Tick] = []
    last: dict[str, Tick] = {}
    t = OPEN
    reconnect_at = OPEN + timedelta(hours=3, minutes=7, seconds=13)
    reconnected = False
    while t < CLOSE:
        t += timedelta(milliseconds=rng.randint(200, 4000))
        if not reconnected and t >= reconnect_at:
            reconnected = True
            # After a reconnect Upstox repeats each key's state; NSE_FO|2 traded meanwhile.
            snapshot = []
            for key, prev in last.items():
                if key == "NSE_FO|2":
                    state[key][0] += 1.5
                    state[key][1] += 700
                    moved = prev._replace(
                        time=t, ltp=state[key][0], ltq=700, vtt=state[key][1], snapshot=True
                    )
                    snapshot.append(moved)
                    kept.append(moved)
                    last[key] = moved
                else:
                    snapshot.append(prev._replace(snapshot=True))  # identical: must not count
            frames.append(Frame("initial_feed", t, ticks=snapshot))
            continue
        batch = []
        for key in rng.sample(list(instruments), rng.randint(1, 4)):
            s = state[key]
            s[0] = round(max(s[0] + rng.gauss(0, 0.3), 1.0), 2)
            qty = rng.randint(1, 20) * 25
            mode = instruments[key]
            vtt = None
            if mode != "ltpc":
                s[1] += qty
                vtt = s[1]
            tick = make_tick(key, mode, t, s[0], qty, vtt, False)
            batch.append(tick)
            kept.append(tick)
            last[key] = tick
        frames.append(Frame("live_feed", t, ticks=batch))
    return frames, kept


def expected(ticks: list[Tick], width_s: int) -> dict[tuple[datetime, str], tuple[object, ...]]:
    """Candles straight from ticks, by the documented rule."""
    prev_vtt: dict[str, int] = {}
    buckets: dict[tuple[datetime, str], list[object]] = {}
    for t in sorted(ticks, key=lambda x: x.time):
        epoch = int(t.time.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % width_s, UTC)
        volume = None
        if t.vtt is not None:
            volume = t.vtt - prev_vtt[t.instrument_key] if t.instrument_key in prev_vtt else (
                t.vtt if t.vtt == t.ltq else None
            )  # fmt: skip
            prev_vtt[t.instrument_key] = t.vtt
        b = buckets.get((start, t.instrument_key))
        if b is None:
            buckets[(start, t.instrument_key)] = [t.ltp, t.ltp, t.ltp, t.ltp, volume, 1]
            continue
        b[1] = max(b[1], t.ltp)  # type: ignore[call-overload]
        b[2] = min(b[2], t.ltp)  # type: ignore[call-overload]
        b[3] = t.ltp
        if volume is not None:
            b[4] = volume + (b[4] or 0)  # type: ignore[operator]
        b[5] += 1  # type: ignore[operator]
    return {k: tuple(v) for k, v in buckets.items()}


async def test_candles_match_an_independent_computation(migrated: str, tmp_path: Path) -> None:
    frames, kept = generate_day()
    writer, registry, _ = make_writer(migrated, tmp_path, max_batch_rows=2000)
    task = asyncio.create_task(writer.run())
    try:
        for f in frames:
            await writer.deliver(f)
        await until(lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) == len(kept))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.close()
    assert sample(registry, "collector_duplicates_suppressed_total", {"kind": "snapshot"}) == 3

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(migrated)

    jobs = Jobs(connect=connect, metrics=Metrics(CollectorRegistry()))
    assert await jobs.refresh_candles()
    conn = await asyncpg.connect(migrated)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE snapshot") == 1
        for level, width in WIDTHS.items():
            rows = await conn.fetch(
                f"SELECT bucket, instrument_key, open, high, low, close, volume, ticks FROM candles_{level}"
            )
            got = {(r["bucket"], r["instrument_key"]): tuple(r)[2:] for r in rows}
            want = expected(kept, width)
            assert got == want, level
        # The volume of the day is the sum of trades, snapshot repeats included once.
        day = await conn.fetch("SELECT instrument_key, volume FROM candles_1d ORDER BY 1")
    finally:
        await conn.close()
    final_vtt = {k: max(t.vtt or 0 for t in kept if t.instrument_key == k) for k in ("NSE_FO|1", "NSE_FO|2")}
    first_qty = {k: next(t for t in kept if t.instrument_key == k) for k in final_vtt}
    for r in day:
        if r["instrument_key"] in final_vtt:
            first = first_qty[r["instrument_key"]]
            assert r["volume"] == final_vtt[r["instrument_key"]] - (first.vtt - first.ltq if first.vtt else 0)
        if r["instrument_key"] == "NSE_EQ|A":
            assert r["volume"] is None  # ltpc carries no cumulative volume


async def test_refresh_is_incremental_and_picks_up_late_ticks(migrated: str, tmp_path: Path) -> None:
    frames, kept = generate_day(seed=3)
    half = len(frames) // 2
    writer, registry, _ = make_writer(migrated, tmp_path)
    late = None

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(migrated)

    jobs = Jobs(connect=connect, metrics=Metrics(CollectorRegistry()), late_data=lambda: late)
    task = asyncio.create_task(writer.run())
    try:
        for f in frames[half:]:  # the afternoon arrives first
            await writer.deliver(f)
        await until(lambda: writer._pending_rows == 0 and writer.queue.empty() and len(writer._batcher) == 0)
        await asyncio.sleep(0.2)
        assert await jobs.refresh_candles()
        for f in frames[:half]:  # then the morning, e.g. replayed from a spool
            await writer.deliver(f)
        await until(
            lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) >= len(kept) - 5
        )
        await asyncio.sleep(0.3)
        late = writer.take_oldest_committed()
        assert await jobs.refresh_candles()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.close()
    conn = await asyncpg.connect(migrated)
    try:
        n_ticks = await conn.fetchval("SELECT count(*) FROM ticks")
        total = await conn.fetchval("SELECT sum(ticks) FROM candles_1d")
        total_1m = await conn.fetchval("SELECT sum(ticks) FROM candles_1m")
    finally:
        await conn.close()
    assert total == total_1m == n_ticks
