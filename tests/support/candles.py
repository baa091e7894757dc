"""A trading day of ticks, the candles they make by the documented rule, and the collector's way in.

``generate_day`` makes the frames Upstox would send for one day (a reconnect
in the middle) and the ticks that should be stored; ``expected`` computes
each level's candles from those ticks, independently of the collector;
``ingest`` and ``refresh`` take the frames the production way (journal,
writer, candle job).
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from collector.core.records import Tick
from collector.db.jobs import LEVELS, Jobs
from collector.metrics import SupervisorMetrics
from tests.support.db import connection
from tests.support.pipeline import encode_ticks, journal_frames, store
from tests.support.ticks import tick as make_tick

WIDTHS = {"candles_1m": 60, "candles_5m": 300, "candles_15m": 900, "candles_1h": 3600, "candles_1d": 86400}
assert tuple(WIDTHS) == LEVELS
# Older than every refresh policy's window (003: at most 30 days), so on TSL only
# the refreshes a test asks for materialize these days: nothing in the background.
OLD_DAY = datetime.now(UTC).date() - timedelta(days=45)


def session(day: date) -> tuple[datetime, datetime]:
    """09:15 to 15:30 IST of ``day``, in UTC."""
    opens = datetime.combine(day, time(3, 45), UTC)
    return opens, datetime.combine(day, time(10, 0), UTC)


def generate_day(day: date = OLD_DAY, seed: int = 11) -> tuple[list[bytes], list[Tick]]:
    """Live frames (protobuf, as Upstox sends them) for a trading day, with a reconnect in the middle.

    Returns the frames to deliver and the ticks that should be stored (what
    the snapshot rule keeps), computed here independently of the collector.
    """
    rng = random.Random(seed)
    instruments = {"NSE_FO|1": "full", "NSE_FO|2": "full", "NSE_FO|3": "option_greeks", "NSE_EQ|A": "ltpc"}
    state = {k: [100.0 + i * 50, 0] for i, k in enumerate(instruments)}  # ltp, vtt
    frames: list[bytes] = []
    kept: list[Tick] = []
    last: dict[str, Tick] = {}
    t, close = session(day)
    reconnect_at = t + timedelta(hours=3, minutes=7, seconds=13)
    reconnected = False
    while t < close:
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
                        time=t, ltp=state[key][0], ltq=700, vtt=int(state[key][1]), snapshot=True
                    )
                    snapshot.append(moved)
                    kept.append(moved)
                    last[key] = moved
                else:
                    snapshot.append(prev._replace(snapshot=True))  # identical: must not count
            frames.append(encode_ticks(snapshot, snapshot=True, feed_time=t))
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
                vtt = int(s[1])
            tick = make_tick(key, t, s[0], vtt, ltq=qty, kind=mode)
            batch.append(tick)
            kept.append(tick)
            last[key] = tick
        frames.append(encode_ticks(batch, feed_time=t))
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


async def ingest(dsn: str, directory: Path, frames: list[bytes]) -> CollectorRegistry:
    """Journal ``frames`` in ``directory`` and let the real writer commit them."""
    journal_frames(directory, frames)
    return await store(dsn, directory)


async def refresh(writer_dsn: str, owner_dsn: str) -> str:
    """One run of the collector's candle job (as collector_writer) and, on TSL, of the database's.

    The database's job runs every minute by itself; running it here makes the
    test independent of the background scheduler. Returns the candles mode.
    """

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(writer_dsn)  # Jobs closes each connection it makes

    registry = CollectorRegistry()
    jobs = Jobs(connect=connect, metrics=SupervisorMetrics(registry))
    assert await jobs.refresh_candles(), "the candle job failed: see the log above"
    assert jobs.mode is not None
    if jobs.mode == "continuous_aggregates":
        async with connection(owner_dsn) as owner:
            job = await owner.fetchval(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'collector_refresh_late_candles'"
            )
            await owner.execute(f"CALL run_job({int(job)})")
            assert await owner.fetchval("SELECT count(*) FROM candle_refresh_requests") == 0
    return jobs.mode
