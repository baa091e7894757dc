"""The backfill job and the holiday cache against the simulator and a real TimescaleDB (both flavours)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from collector.core.calendar import Holiday
from collector.core.gaps import MINUTE, minute_of
from collector.db.backfill import BACKFILL_LIMITS, BACKFILL_LOCK_ID, Backfill, BackfillOptions
from collector.db.holidays import fetched_today, load_holidays, store_holidays
from collector.exceptions import TokenRejected
from collector.metrics import SupervisorMetrics
from collector.simulator.server import Simulator
from collector.supervisor.upstox import REST_LIMITS, TokenSource, UpstoxRest, rest_limiter
from tests.support.db import connection, login
from tests.support.metrics import sample

Candles = dict[tuple[str, datetime], tuple[float, float, float, float, int]]


def make_backfill(
    sim: Simulator, *, token: str | None = None, **options: Any
) -> tuple[Backfill, CollectorRegistry]:
    """A backfill against ``sim`` with the collector's real limiters and fast retries."""
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(registry)
    rest = UpstoxRest(
        sim.url,
        TokenSource(token=token or sim.token),
        rest_limiter(),
        backoff=lambda: iter(lambda: 0.05, None),
        on_call=lambda api: metrics.rest_requests.labels(api).inc(),
        on_failure=lambda api, reason: metrics.rest_failures.labels(api, reason).inc(),
    )
    return Backfill(rest, metrics=metrics, options=BackfillOptions(**options)), registry


@asynccontextmanager
async def market(*, stocks: int = 10) -> AsyncIterator[tuple[Simulator, datetime]]:
    """A simulator whose market opened an hour ago and trades only when told; and a base minute."""
    now = datetime.now(UTC)
    async with Simulator(
        rate=0, stocks=stocks, start_ms=int((now - timedelta(hours=1)).timestamp() * 1000)
    ) as sim:
        yield sim, minute_of(now) - timedelta(minutes=20)


def trade(sim: Simulator, key: str, start: datetime, minutes: int, per_minute: int = 5) -> None:
    """Trades in the simulator's market for ``minutes`` minutes from ``start``."""
    for m in range(minutes):
        for i in range(per_minute):
            at = start + timedelta(minutes=m, seconds=1 + i * 50 / per_minute)
            sim.market.tick(key, int(at.timestamp() * 1000))


def sim_candles(sim: Simulator, keys: Iterable[str], start: datetime, end: datetime) -> Candles:
    out: Candles = {}
    for key in keys:
        for m, o, h, lo, c, v, _ in sim.market.candles(
            key, int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        ):
            out[(key, datetime.fromtimestamp(m / 1000, UTC))] = (o, h, lo, c, v)
    return out


async def add_tick(conn: asyncpg.Connection, key: str, at: datetime, *, snapshot: bool = False) -> None:
    await conn.execute(
        "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp, volume) "
        "VALUES ($1, $2, 'full', $3, $1, $1, 1.0, 10)",
        at, key, snapshot,
    )  # fmt: skip


async def add_gap(
    conn: asyncpg.Connection, start: datetime, end: datetime, keys: list[str], connection: int = 0
) -> None:
    await conn.execute(
        "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason, instruments) "
        "VALUES ($1, $2, $3, $4, 'reconnect', $5)",
        connection, start, end, sorted({k.partition("|")[0] for k in keys}), keys,
    )  # fmt: skip


async def complete_view(
    conn: asyncpg.Connection, keys: list[str], start: datetime, end: datetime
) -> dict[Any, Any]:
    await conn.execute(
        "SELECT refresh_candles($1)", start - timedelta(hours=1)
    )  # a no-op where aggregates are continuous
    rows = await conn.fetch(
        "SELECT * FROM candles_1m_complete WHERE instrument_key = ANY($1) AND bucket >= $2 AND bucket < $3",
        keys, start, end,
    )  # fmt: skip
    return {(r["instrument_key"], r["bucket"]): r for r in rows}


async def test_a_gap_is_filled_with_upstox_candles_and_ticks_win_where_they_exist(migrated: str) -> None:
    async with market() as (sim, base):
        a, b, c = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:3]
        end = base + timedelta(minutes=4)
        for key in (a, b, c):
            trade(sim, key, base, 4)
        async with connection(migrated) as conn:
            # Our ticks: a has live ticks in the gap's first and last minutes, b only a
            # reconnect snapshot in its third minute and a live tick in its last, c none.
            for at in (
                base + timedelta(seconds=5),
                base + timedelta(seconds=20),
                base + timedelta(minutes=3, seconds=30),
            ):
                await add_tick(conn, a, at)
            await add_tick(conn, b, base + timedelta(minutes=2, seconds=50), snapshot=True)
            await add_tick(conn, b, base + timedelta(minutes=3, seconds=40))
            await add_gap(
                conn, base + timedelta(seconds=30), base + timedelta(minutes=3, seconds=10), [a, b, c]
            )
            before = await complete_view(conn, [b], base, end)
            assert before[(b, base + 2 * MINUTE)]["source"] == "ticks"  # the snapshot's, until backfilled

            backfill, registry = make_backfill(sim)
            report = await backfill.run(conn)
            assert report.requests == sim.stats()["rest_requests"]["candles"] <= 3 + 3  # one per key and day
            assert report.stored == 12  # every minute of the gap that Upstox has, boundary minutes too
            [gap] = await conn.fetch("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "filled", gap["fill_detail"]
            # a: 2 minutes without ticks; b: 3 (a snapshot is not a live tick); c: 4.
            assert (gap["minutes_expected"], gap["minutes_filled"], gap["fill_attempts"]) == (9, 9, 1)
            assert gap["fill_detail"] == "9 of 9 instrument-minutes filled from Upstox's candles"
            assert await conn.fetchval(
                "SELECT count(DISTINCT source) FROM candles_backfill WHERE source LIKE 'upstox_%'"
            )

            want = sim_candles(sim, [a, b, c], base, end)
            got = await complete_view(conn, [a, b, c], base, end)
            ticks_minutes = {(a, base), (a, base + 3 * MINUTE), (b, base + 3 * MINUTE)}
            assert set(got) == set(want)  # a row for every minute of every instrument
            for k, row in got.items():
                if k in ticks_minutes:
                    assert row["source"] == "ticks" and row["close"] == 1.0, k
                else:
                    assert row["source"] == "backfill", k
                    assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == want[k], k

            assert sample(registry, "collector_backfill_candles_total") == 12
            assert sample(registry, "collector_gaps", {"status": "filled"}) == 1
            assert sample(registry, "collector_gaps", {"status": "pending"}) == 0
            assert sample(registry, "collector_backfill_oldest_pending_gap_timestamp_seconds") == 0
            assert sample(registry, "collector_rest_requests_total", {"api": "candles"}) == report.requests
            # Nothing pending: a second run asks nothing.
            assert (await backfill.run(conn)).requests == 0


async def test_no_request_when_ticks_cover_every_minute(migrated: str) -> None:
    async with market() as (sim, base):
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:2]
        async with connection(migrated) as conn:
            for key in keys:
                for m in range(3):
                    await add_tick(conn, key, base + timedelta(minutes=m, seconds=45))
            await add_gap(conn, base + timedelta(seconds=50), base + timedelta(minutes=2, seconds=10), keys)
            backfill, _ = make_backfill(sim)
            report = await backfill.run(conn)
            assert report.requests == 0 and sim.stats()["rest_requests"] == {}
            gap = await conn.fetchrow("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "filled" and gap["minutes_expected"] == 0
            assert gap["fill_detail"] == "nothing missing: every minute of the gap has ticks"


async def test_429_waits_for_retry_after_and_5xx_is_retried(migrated: str) -> None:
    async with market() as (sim, base):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        trade(sim, key, base, 2)
        async with connection(migrated) as conn:
            await add_gap(conn, base, base + 2 * MINUTE, [key])
            sim.fail_candles(429, retry_after_s=1.5)
            sim.fail_candles(503, count=2)
            backfill, registry = make_backfill(sim)
            await backfill.run(conn)
            assert await conn.fetchval("SELECT fill_status FROM feed_gaps") == "filled"
            times = sim.rest.times["candles"]
            assert len(times) == 4
            assert times[1] - times[0] >= 1.45  # Retry-After honoured
            assert sample(registry, "collector_rest_failures_total", {"api": "candles", "reason": "429"}) == 1
            assert (
                sample(registry, "collector_rest_failures_total", {"api": "candles", "reason": "network"})
                == 2
            )


async def test_5xx_beyond_the_retries_leaves_the_gap_pending_without_spending_an_attempt(
    migrated: str,
) -> None:
    async with market() as (sim, base):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        trade(sim, key, base, 1)
        async with connection(migrated) as conn:
            await add_gap(conn, base, base + MINUTE, [key])
            sim.fail_candles(500, count=4)
            backfill, _ = make_backfill(sim, max_attempts=1)
            await backfill.run(conn)
            gap = await conn.fetchrow("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "pending" and gap["fill_attempts"] == 0
            assert "candles answered 500" in gap["fill_detail"]
            await backfill.run(conn)  # Upstox is back
            assert await conn.fetchval("SELECT fill_status FROM feed_gaps") == "filled"


async def test_empty_answers_are_asked_again_then_given_up(migrated: str) -> None:
    async with market() as (sim, base):
        a, b = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:2]
        trade(sim, a, base, 1)
        trade(sim, b, base + 5 * MINUTE, 1)
        async with connection(migrated) as conn:
            await add_gap(conn, base, base + MINUTE, [a])
            await add_gap(conn, base + 5 * MINUTE, base + 6 * MINUTE, [b], connection=1)
            sim.empty_candles(count=100, key=a)  # Upstox keeps answering a with nothing
            sim.empty_candles(count=1, key=b)  # ...and b with nothing once
            backfill, _ = make_backfill(sim, max_attempts=2)
            await backfill.run(conn)
            states = {r["connection"]: r for r in await conn.fetch("SELECT * FROM feed_gaps")}
            assert [(s["fill_status"], s["fill_attempts"]) for s in states.values()] == [("pending", 1)] * 2
            assert "not in Upstox's answer yet (attempt 1 of 2)" in states[0]["fill_detail"]
            await backfill.run(conn)
            states = {r["connection"]: r for r in await conn.fetch("SELECT * FROM feed_gaps")}
            assert states[1]["fill_status"] == "filled"
            assert states[0]["fill_status"] == "unfillable"
            assert "absent from Upstox's answers after 2 attempts" in states[0]["fill_detail"]


async def test_an_instrument_upstox_refuses_makes_the_gap_partial(migrated: str) -> None:
    async with market() as (sim, base):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        trade(sim, key, base, 2)
        async with connection(migrated) as conn:
            await add_gap(conn, base, base + 2 * MINUTE, [key, "NSE_FO|999999999"])
            backfill, _ = make_backfill(sim)
            await backfill.run(conn)
            gap = await conn.fetchrow("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "partial"
            assert (gap["minutes_expected"], gap["minutes_filled"]) == (4, 2)
            assert "Upstox refused NSE_FO|999999999" in gap["fill_detail"] and "400" in gap["fill_detail"]
            assert "Instrument key is invalid" in gap["fill_detail"]


async def test_a_refused_token_stops_the_run_and_keeps_the_gaps(migrated: str) -> None:
    async with market() as (sim, base):
        keys = [k for k in sim.market.instruments if k.startswith("NSE_FO")][:20]
        async with connection(migrated) as conn:
            await add_gap(conn, base, base + MINUTE, keys)
            backfill, _ = make_backfill(sim, token="expired", concurrency=1)
            with pytest.raises(TokenRejected):
                await backfill.run(conn)
            assert sim.stats()["rest_requests"]["candles"] == 1  # not one per instrument
            gap = await conn.fetchrow("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "pending" and gap["fill_attempts"] == 0


async def test_collectors_sharing_a_database_take_turns(migrated: str) -> None:
    async with market() as (sim, base):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        trade(sim, key, base, 1)
        async with connection(migrated) as conn, connection(migrated) as other:
            await add_gap(conn, base, base + MINUTE, [key])
            await other.execute("SELECT pg_advisory_lock($1)", BACKFILL_LOCK_ID)  # another collector's run
            backfill, _ = make_backfill(sim)
            assert (await backfill.run(conn)).gaps == 0
            assert await conn.fetchval("SELECT fill_status FROM feed_gaps") == "pending"
            await other.execute("SELECT pg_advisory_unlock($1)", BACKFILL_LOCK_ID)
            assert (await backfill.run(conn)).gaps == 1
            assert await conn.fetchval("SELECT fill_status FROM feed_gaps") == "filled"


async def test_gaps_older_than_upstox_history_are_unfillable(migrated: str) -> None:
    async with market() as (sim, _):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        async with connection(migrated) as conn:
            old = datetime(2021, 6, 1, 4, 0, tzinfo=UTC)
            await add_gap(conn, old, old + 2 * MINUTE, [key])
            await add_gap(conn, old + MINUTE, old + 3 * MINUTE, [], connection=1)  # from before 005
            backfill, _ = make_backfill(sim)
            assert (await backfill.run(conn)).requests == 0
            states = {r["connection"]: r for r in await conn.fetch("SELECT * FROM feed_gaps")}
            assert states[0]["fill_status"] == "unfillable" and "history" in states[0]["fill_detail"]
            assert states[1]["fill_status"] == "unfillable" and "no instruments" in states[1]["fill_detail"]


async def test_a_gap_whose_last_minute_is_not_over_waits_for_it(migrated: str) -> None:
    async with market() as (sim, _):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        now = datetime.now(UTC)
        async with connection(migrated) as conn:
            await add_gap(conn, now - timedelta(minutes=2), now, [key])
            backfill, _ = make_backfill(sim)
            report = await backfill.run(conn)
            assert report.retry_at is not None and report.retry_at > now
            gap = await conn.fetchrow("SELECT * FROM feed_gaps")
            assert gap["fill_status"] == "pending" and "instrument-minutes to end" in gap["fill_detail"]


async def test_the_collector_writer_role_can_backfill(migrated: str) -> None:
    async with market() as (sim, base):
        key = next(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        trade(sim, key, base, 2)
        async with connection(migrated) as owner:
            await add_gap(owner, base, base + 2 * MINUTE, [key])
        async with login(migrated, "collector_writer") as dsn:
            async with connection(dsn) as conn:
                backfill, _ = make_backfill(sim)
                await backfill.run(conn)
                assert await conn.fetchval("SELECT fill_status FROM feed_gaps") == "filled"
                await store_holidays(conn, {"status": "success", "data": [HOLIDAY]})
                for sql in (
                    "DELETE FROM candles_backfill",
                    "DELETE FROM feed_gaps",
                    "UPDATE feed_gaps SET reason = 'x'",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)
        async with login(migrated, "collector_reader") as dsn:
            async with connection(dsn) as conn:
                assert await conn.fetchval("SELECT count(*) FROM candles_1m_complete") == 2
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("UPDATE feed_gaps SET fill_status = 'filled'")


@pytest.mark.limit(240)
async def test_rate_limits_hold_under_a_backlog_of_hundreds_of_gaps(migrated: str) -> None:
    async with market(stocks=120) as (sim, base):
        keys = sorted(sim.market.instruments)[:400]
        for i, key in enumerate(keys):
            trade(sim, key, base + (i % 10) * MINUTE, 1, per_minute=2)
        async with connection(migrated) as conn:
            for i, key in enumerate(keys):  # 400 gaps, one instrument each: one request each
                await add_gap(
                    conn, base + (i % 10) * MINUTE, base + (i % 10 + 1) * MINUTE, [key], connection=i
                )
            backfill, registry = make_backfill(sim)
            started = time.monotonic()
            first = await backfill.run(conn)  # the default budget: 250 requests per run
            assert first.requests == 250
            assert await conn.fetchval("SELECT count(*) FROM feed_gaps WHERE fill_status = 'filled'") == 250
            # The same backfill (its limiters remember the first run), a larger budget.
            backfill.options = BackfillOptions(max_requests_per_run=1000)
            second = await backfill.run(conn)
            took = time.monotonic() - started
            assert second.requests == 150
            assert await conn.fetchval("SELECT count(*) FROM feed_gaps WHERE fill_status = 'filled'") == 400
        stats = sim.stats()
        print(
            f"400 gaps: {stats['rest_max_per_window']} requests at most per 1 s / 60 s / 1800 s; {took:.1f}s"
        )
        assert stats["rest_requests"]["candles"] == 400
        upstox = dict(zip(("1", "60", "1800"), (50, 500, 2000), strict=True))
        # Our limiter counts when a request leaves the event loop; up to `concurrency` requests
        # in flight can arrive a moment later, in the next window, so allow that many more.
        slack = backfill.options.concurrency
        ours = {str(int(w)): n for n, w in BACKFILL_LIMITS}
        for window, seen in stats["rest_max_per_window"].items():
            assert seen <= ours[window] + slack <= upstox[window], (window, seen)
        # The minute's share was used, and held.
        assert 250 <= stats["rest_max_per_window"]["60"] <= 250 + slack
        assert took >= 60  # the 251st request waited for the first minute to pass
        assert all(n < upstox[str(int(w))] for n, w in REST_LIMITS)
        assert sample(registry, "collector_rest_requests_total", {"api": "candles"}) == 400


HOLIDAY = {
    "date": "2026-01-26", "description": "Republic Day", "holiday_type": "TRADING_HOLIDAY",
    "closed_exchanges": ["NSE", "NFO", "CDS", "BSE", "BFO", "BCD", "MCX"], "open_exchanges": [],
}  # fmt: skip
MUHURAT = {
    "date": "2026-11-08", "description": "Diwali Laxmi Pujan", "holiday_type": "TRADING_HOLIDAY",
    "closed_exchanges": ["NSE", "NFO", "CDS", "BSE", "BFO", "BCD"],
    "open_exchanges": [{"exchange": "NSE", "start_time": 1794135600000, "end_time": 1794139200000}],
}  # fmt: skip


async def test_holidays_are_cached_and_revised(migrated: str) -> None:
    async with Simulator(rate=0, stocks=5, holidays=[HOLIDAY, MUHURAT]) as sim:
        rest = UpstoxRest(sim.url, TokenSource(token=sim.token), rest_limiter())
        async with connection(migrated) as conn:
            assert await load_holidays(conn) == ([], None)
            stored = await store_holidays(conn, await rest.holidays())
            cached, fetched_at = await load_holidays(conn)
            assert cached == stored and [h.day.isoformat() for h in cached] == ["2026-01-26", "2026-11-08"]
            assert fetched_today(fetched_at)
            [muhurat] = [h for h in cached if h.description.startswith("Diwali")]
            assert (
                isinstance(muhurat, Holiday)
                and muhurat.special[0][0] == "NSE"
                and "MCX" not in muhurat.closed
            )
            # Upstox revises the list: a day of the same year dropped goes, other years stay.
            await conn.execute(
                "INSERT INTO market_holidays (day, description, closed_exchanges) VALUES ('2025-12-25', 'old', '{NSE}')"
            )
            await store_holidays(conn, {"status": "success", "data": [MUHURAT]})
            days = [h.day.isoformat() for h in (await load_holidays(conn))[0]]
            assert days == ["2025-12-25", "2026-11-08"]
            # A malformed list changes nothing.
            with pytest.raises(ValueError):
                await store_holidays(conn, {"status": "success", "data": [{"date": "soon"}]})
            assert [h.day.isoformat() for h in (await load_holidays(conn))[0]] == days
            assert sim.stats()["rest_requests"] == {"holidays": 1}


def test_the_backfill_leaves_authorize_its_share() -> None:
    # Authorize (2/s, 30/min, 300/30 min) and the backfill together stay under the one limiter.
    from collector.supervisor.upstox import AUTHORIZE_LIMITS

    for (auth, window), (fill, _), (shared, _) in zip(
        AUTHORIZE_LIMITS, BACKFILL_LIMITS, REST_LIMITS, strict=True
    ):
        assert auth + fill <= shared, window
