"""Gaps recorded and filled by the whole collector: ``python -m collector run`` against the simulator.

The simulator's market keeps trading while nobody listens, so the candles of
a gap's minutes exist; the collector must record the gap, fetch exactly those
candles, and show them in ``candles_1m_complete`` where it has no ticks.
These tests take minutes of real time: a gap must cover whole minutes.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from collector.core.gaps import MINUTE, gap_minutes, minute_of
from collector.core.times import IST
from collector.simulator.server import Simulator
from tests.support.db import connection, query
from tests.support.process import CollectorProcess

CLOSED = json.dumps({"*": {"open": "00:00", "close": "24:00", "days": []}})
ALL_EXCHANGES = ["NSE", "NFO", "CDS", "BSE", "BFO", "BCD", "MCX"]


def universe(sim: Simulator) -> dict[str, list[str]]:
    fo = sorted(k for k in sim.market.instruments if k.startswith("NSE_FO"))[:6]
    return {"full": fo, "ltpc": ["NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"]}


def settings(sim: Simulator, dsn: str, **extra: str) -> dict[str, str]:
    return {
        "COLLECTOR_DATABASE_URL": dsn,
        "COLLECTOR_UPSTOX_API_URL": sim.url,
        "COLLECTOR_UPSTOX_TOKEN": sim.token,
        "COLLECTOR_SUBSCRIPTIONS": json.dumps(universe(sim)),
        "COLLECTOR_CONNECTIONS": "1",
        "COLLECTOR_CANDLE_REFRESH_INTERVAL_S": "1",
        "COLLECTOR_FLUSH_INTERVAL_S": "0.1",
        **extra,
    }


async def wait_rows(
    run: CollectorProcess, dsn: str, sql: str, timeout_s: float, what: str
) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await query(dsn, sql)
        if rows:
            return rows
        assert run.proc is None or run.proc.poll() is None, f"collector exited:\n{run.tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{run.tail()}"
        await asyncio.sleep(0.5)


async def expect_filled(dsn: str, sim: Simulator, gap: asyncpg.Record) -> int:
    """Every minute of the gap, for every affected instrument, in candles_1m_complete; returns minutes backfilled.

    Minutes with a live tick come from ticks; the others are backfilled and equal
    the simulator's candle. At least one whole minute lies inside the gap.
    """
    start, end = gap["started_at"], gap["ended_at"]
    minutes = gap_minutes(start, end)
    inside = [m for m in minutes if m >= start and m + MINUTE <= end]
    assert inside, (start, end)
    lo, hi = minutes[0], minutes[-1] + MINUTE
    async with connection(dsn) as conn:
        await conn.execute("SELECT refresh_candles($1)", lo - timedelta(minutes=10))  # no-op with aggregates
        rows = {
            (r["instrument_key"], r["bucket"]): r
            for r in await conn.fetch(
                "SELECT * FROM candles_1m_complete WHERE bucket >= $1 AND bucket < $2", lo, hi
            )
        }
        ticks = await conn.fetch(
            "SELECT instrument_key, time_bucket('1 minute', time) AS m FROM ticks "
            "WHERE time >= $1 AND time < $2 AND NOT snapshot GROUP BY 1, 2",
            lo,
            hi,
        )
        live = {(r["instrument_key"], r["m"]) for r in ticks}
    backfilled = 0
    for key in gap["instruments"]:
        candles = {
            datetime.fromtimestamp(m / 1000, UTC): (o, h, low, c, v)
            for m, o, h, low, c, v, _ in sim.market.candles(
                key, int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
            )
        }
        for m in minutes:
            assert (key, m) in rows, (key, m, "no candle at all")
            row = rows[(key, m)]
            if (key, m) in live:
                assert row["source"] == "ticks", (key, m)
                continue
            assert m not in inside or (key, m) not in live  # nobody listened
            assert row["source"] == "backfill", (key, m)
            assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == candles[m], (key, m)
            backfilled += 1
        for m in inside:
            assert rows[(key, m)]["source"] == "backfill", (key, m)
    return backfilled


@pytest.mark.limit(420)
async def test_a_dropped_socket_leaves_a_gap_that_is_backfilled(migrated: str, tmp_path: Path) -> None:
    async with Simulator(rate=300, stocks=10) as sim:
        keys = sorted(k for ks in universe(sim).values() for k in ks)
        with CollectorProcess(tmp_path, settings(sim, migrated)) as run:
            await run.wait_for(
                lambda: run.metric("collector_rows_written_total", table="ticks") > 500, 60, "ticks"
            )
            sim.fail_authorize(503, count=10**6)  # it cannot come back...
            await sim.drop(1006)
            await asyncio.sleep(120)  # ...for two minutes of market time
            sim.clear_faults()
            [gap] = await wait_rows(
                run, migrated, "SELECT * FROM feed_gaps WHERE fill_status <> 'pending'", 150, "the gap filled"
            )
            assert gap["fill_status"] == "filled", gap["fill_detail"]
            assert gap["reason"] == "reconnect" and sorted(gap["instruments"]) == keys
            assert timedelta(seconds=119) < gap["ended_at"] - gap["started_at"] < timedelta(seconds=140)
            filled = await expect_filled(migrated, sim, gap)
            assert gap["minutes_filled"] == filled == gap["minutes_expected"] >= len(keys)
            assert run.metric("collector_backfill_candles_total") >= filled
            assert run.metric("collector_gaps", status="filled") == 1
            assert run.metric("collector_gaps", status="pending") == 0
            assert (
                run.metric("collector_rest_requests_total", api="candles")
                == sim.stats()["rest_requests"]["candles"]
            )
            rc, _ = await run.stop()
            assert rc == 0, run.tail()
        # One intraday request per instrument (two when the gap straddles midnight IST).
        assert len(keys) <= sim.stats()["rest_requests"]["candles"] <= 2 * len(keys)
        assert sim.stats()["rest_requests"]["holidays"] == 1


@pytest.mark.limit(420)
async def test_time_the_collector_was_stopped_is_a_gap_that_is_backfilled(
    migrated: str, tmp_path: Path
) -> None:
    async with Simulator(rate=300, stocks=10) as sim:
        env = settings(sim, migrated)
        run = CollectorProcess(tmp_path, env).start()
        try:
            await run.wait_for(
                lambda: run.metric("collector_rows_written_total", table="ticks") > 500, 60, "ticks"
            )
            rc, _ = await run.stop()
            assert rc == 0, run.tail()
            stopped = datetime.now(UTC)
            # Down across a minute boundary, with one whole minute missed.
            await asyncio.sleep(
                (minute_of(stopped + timedelta(seconds=1)) + 2 * MINUTE - stopped).total_seconds() + 2
            )
            run = CollectorProcess(tmp_path, env).start()
            [gap] = await wait_rows(
                run, migrated, "SELECT * FROM feed_gaps WHERE fill_status <> 'pending'", 150, "the gap filled"
            )
            assert gap["reason"] == "collector_down" and gap["fill_status"] == "filled", gap["fill_detail"]
            assert gap["started_at"] < stopped < gap["ended_at"]
            assert sorted(gap["instruments"]) == sorted(k for ks in universe(sim).values() for k in ks)
            assert await expect_filled(migrated, sim, gap) == gap["minutes_filled"] > 0
            rc, _ = await run.stop()
            assert rc == 0, run.tail()
        finally:
            run.kill()
        assert await query(migrated, "SELECT 1 FROM feed_gaps WHERE fill_status <> 'filled'") == []


@pytest.mark.parametrize("why", ["closed", "holiday"])
async def test_no_gap_while_the_market_is_closed_or_on_a_holiday(
    why: str, migrated: str, tmp_path: Path
) -> None:
    today = datetime.now(IST).date().isoformat()
    holiday = {
        "date": today, "description": "Simulated holiday", "holiday_type": "TRADING_HOLIDAY",
        "closed_exchanges": ALL_EXCHANGES, "open_exchanges": [],
    }  # fmt: skip
    async with Simulator(rate=300, stocks=10, holidays=[holiday] if why == "holiday" else []) as sim:
        extra = {"COLLECTOR_MARKET_HOURS": CLOSED} if why == "closed" else {}
        if why == "closed":
            await sim.set_market(dict.fromkeys(sim.segments, "NORMAL_CLOSE"))
        env = settings(sim, migrated, **extra)
        for _ in range(2):  # start, stop a few seconds, start again: the span between is not a gap
            run = CollectorProcess(tmp_path, env).start()
            try:
                await run.wait_for(lambda r=run: r.metric("collector_feed_connected") == 1, 60, "connected")
                await asyncio.sleep(3)
                rc, _ = await run.stop()
                assert rc == 0, run.tail()
            finally:
                run.kill()
        assert len(await query(migrated, "SELECT * FROM feed_sessions")) == 2
        assert await query(migrated, "SELECT * FROM feed_gaps") == []
        if why == "holiday":
            [cached] = await query(migrated, "SELECT * FROM market_holidays")
            assert cached["day"].isoformat() == today and sorted(cached["closed_exchanges"]) == sorted(
                ALL_EXCHANGES
            )
            assert sim.stats()["rest_requests"]["holidays"] == 1  # the second start used the cache
