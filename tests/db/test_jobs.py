"""Scheduled jobs on a real TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import CollectorRegistry

from collector.db.jobs import Jobs, candles_mode
from collector.metrics import SupervisorMetrics
from tests.support.db import connection
from tests.support.metrics import sample


async def test_retention_drops_old_ticks_and_keeps_recent(migrated: str) -> None:
    async with connection(migrated) as conn:
        now = datetime.now(UTC)
        for age_days in (30, 20, 1, 0):
            t = now - timedelta(days=age_days)
            await conn.execute(
                "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp) "
                "VALUES ($1, 'NSE_EQ|X', 'ltpc', false, $1, $1, 1.0)",
                t,
            )
        registry = CollectorRegistry()

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(migrated)

        assert await Jobs(connect=connect, metrics=SupervisorMetrics(registry), retention_days=7).retention()
        assert sample(registry, "collector_job_last_success_timestamp_seconds", {"task": "retention"}) > 0
        ages = await conn.fetch("SELECT now() - time AS age FROM ticks ORDER BY time")
        if await candles_mode(conn) == "scheduled_refresh":
            assert len(ages) == 2 and all(r["age"] < timedelta(days=2) for r in ages)


async def test_a_failing_job_is_counted_not_raised(migrated: str) -> None:
    registry = CollectorRegistry()

    async def connect() -> asyncpg.Connection:
        raise ConnectionRefusedError("database away (test)")

    assert not await Jobs(connect=connect, metrics=SupervisorMetrics(registry)).refresh_candles()
    assert sample(registry, "collector_job_failures_total", {"task": "candle_refresh"}) == 1
