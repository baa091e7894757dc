"""Candles (all five levels) against an independent computation from the ticks, on both flavours.

The ticks go the production way: protobuf frames in a journal, the real
writer (logged in as a ``collector_writer`` user), then the collector's candle
job as that user. Where the levels are continuous aggregates (TSL), that job
hands late ticks over and the database's own job (migration 008) refreshes
them as the owner; on the Apache build the job refreshes the tables itself.
Both flavours are compared with the same computation (``expected``), so the
continuous aggregates equal the Apache path's candles for the same day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from collector.db.jobs import LEVELS, Jobs, candles_mode
from collector.metrics import SupervisorMetrics
from tests.support.candles import OLD_DAY, WIDTHS, expected, generate_day, ingest, refresh, session
from tests.support.db import connection, login
from tests.support.metrics import sample


async def candles(conn: asyncpg.Connection, level: str) -> dict[tuple[datetime, str], tuple[object, ...]]:
    rows = await conn.fetch(
        f"SELECT bucket, instrument_key, open, high, low, close, volume, ticks FROM {level}"
    )
    return {(r["bucket"], r["instrument_key"]): tuple(r)[2:] for r in rows}


async def set_materialized_only(conn: asyncpg.Connection, value: bool) -> None:
    for level in LEVELS:
        await conn.execute(f"ALTER MATERIALIZED VIEW {level} SET (timescaledb.materialized_only = {value})")


async def test_candles_match_an_independent_computation(migrated: str, tmp_path: Path) -> None:
    frames, kept = generate_day()
    async with login(migrated, "collector_writer") as writer:
        registry = await ingest(writer, tmp_path, frames)
        mode = await refresh(writer, migrated)
    assert sample(registry, "collector_rows_written_total", {"table": "ticks"}) == len(kept)
    assert sample(registry, "collector_duplicates_suppressed_total", {"kind": "snapshot"}) == 3
    async with connection(migrated) as conn:
        assert await candles_mode(conn) == mode
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE snapshot") == 1
        for level, width in WIDTHS.items():
            assert await candles(conn, level) == expected(kept, width), level
        if mode == "continuous_aggregates":
            # What the refresh materialized, without the real-time part, is the same.
            await set_materialized_only(conn, True)
            for level, width in WIDTHS.items():
                assert await candles(conn, level) == expected(kept, width), f"{level} (materialized only)"
            await set_materialized_only(conn, False)
        # The volume of the day is the sum of trades, snapshot repeats included once.
        day = await conn.fetch("SELECT instrument_key, volume FROM candles_1d ORDER BY 1")
    final_vtt = {k: max(t.vtt or 0 for t in kept if t.instrument_key == k) for k in ("NSE_FO|1", "NSE_FO|2")}
    first_qty = {k: next(t for t in kept if t.instrument_key == k) for k in final_vtt}
    assert {r["instrument_key"] for r in day} == {"NSE_FO|1", "NSE_FO|2", "NSE_FO|3", "NSE_EQ|A"}
    for r in day:
        if r["instrument_key"] in final_vtt:
            first = first_qty[r["instrument_key"]]
            earlier = first.vtt - (first.ltq or 0) if first.vtt is not None else 0
            assert r["volume"] == final_vtt[r["instrument_key"]] - earlier
        if r["instrument_key"] == "NSE_EQ|A":
            assert r["volume"] is None  # ltpc carries no cumulative volume


async def test_late_ticks_of_an_old_day_are_refreshed(migrated: str, tmp_path: Path) -> None:
    # The afternoon arrives live and is refreshed; the morning comes later from
    # another connection's journal (replayed after an outage), older than any
    # refresh policy reaches: only the late refresh can put it into the candles.
    frames, kept = generate_day(seed=3)
    _, noon = session(OLD_DAY)
    noon -= timedelta(hours=3)  # 07:00 UTC, 12:30 IST
    split = next(i for i, f in enumerate(frames) if _frame_time(f) >= noon)
    async with login(migrated, "collector_writer") as writer:
        await ingest(writer, tmp_path / "live", frames[split:])
        await refresh(writer, migrated)
        await ingest(writer, tmp_path / "replay", frames[:split])
        async with connection(migrated) as conn:
            n_ticks = await conn.fetchval("SELECT count(*) FROM ticks")
            assert n_ticks == len(kept)
            for level in LEVELS:  # the morning is not in the candles yet
                assert await conn.fetchval(f"SELECT sum(ticks) FROM {level}") < n_ticks, level
            await refresh(writer, migrated)
            for level, width in WIDTHS.items():
                got = await candles(conn, level)
                want = expected(kept, width)
                # Prices and counts are the ticks'; volume depends on what each journal saw first.
                assert {k: (*v[:4], v[5]) for k, v in got.items()} == {
                    k: (*v[:4], v[5]) for k, v in want.items()
                }, level
                volume = await conn.fetchval(f"SELECT sum(volume) FROM {level}")
                assert volume == await conn.fetchval("SELECT sum(volume) FROM ticks"), level


def _frame_time(frame: bytes) -> datetime:
    from collector.proto import MarketDataFeedV3_pb2 as pb

    msg = pb.FeedResponse()
    msg.ParseFromString(frame)
    return datetime.fromtimestamp(msg.currentTs / 1000, UTC)


async def test_ticks_committed_after_a_refresh_show_in_every_level(migrated: str, tmp_path: Path) -> None:
    """The real-time part: on TSL every level shows new ticks at once; the Apache path after its refresh."""
    first, kept_first = generate_day(OLD_DAY, seed=5)
    second, kept_second = generate_day(OLD_DAY + timedelta(days=1), seed=6)
    async with login(migrated, "collector_writer") as writer:
        await ingest(writer, tmp_path / "a", first)
        mode = await refresh(writer, migrated)
        await ingest(writer, tmp_path / "b", second)
        async with connection(migrated) as conn:
            both = {w: {**expected(kept_first, w), **expected(kept_second, w)} for w in WIDTHS.values()}
            if mode == "continuous_aggregates":
                # Still the first day's refresh only: no refresh request is waiting.
                assert await conn.fetchval("SELECT count(*) FROM candle_refresh_requests") == 0
                for level, width in WIDTHS.items():
                    assert await candles(conn, level) == both[width], level
            else:
                for level, width in WIDTHS.items():  # the tables change only when refreshed
                    assert await candles(conn, level) == expected(kept_first, width), level
            await refresh(writer, migrated)
            for level, width in WIDTHS.items():
                assert await candles(conn, level) == both[width], level


async def test_a_hand_over_the_database_leaves_waiting_fails_the_candle_job(migrated: str) -> None:
    async with connection(migrated) as owner:
        mode = await candles_mode(owner)
        if mode == "continuous_aggregates":  # the database's job stopped (or failing)
            job = await owner.fetchval(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'collector_refresh_late_candles'"
            )
            await owner.execute("SELECT alter_job($1, scheduled => false)", job)
        await owner.execute(
            "INSERT INTO candle_refresh_requests (since, requested_at) VALUES (now() - interval '40 days', $1)",
            datetime.now(UTC) - timedelta(minutes=31),
        )
    async with login(migrated, "collector_writer") as writer:

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(writer)

        registry = CollectorRegistry()
        ok = await Jobs(connect=connect, metrics=SupervisorMetrics(registry)).refresh_candles()
    failures = sample(registry, "collector_job_failures_total", {"task": "candle_refresh"})
    if mode == "continuous_aggregates":
        assert not ok and failures == 1  # counted: the CollectorJobFailing alert follows
    else:
        assert ok and failures == 0  # the Apache path refreshes by itself and never hands over
