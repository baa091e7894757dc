"""Scheduled jobs (APScheduler): candle refresh, retention, instrument sync.

Where TimescaleDB has continuous aggregates and policies, the database does
the candle and retention work itself; on the Apache-licensed build these jobs
do it. Either way the candle refresh follows late data: every committed batch
lowers its journal's ``dirty_since`` to its oldest tick, and the refresh takes
those marks and recomputes candles from the oldest one. On the continuous
aggregate path it only hands the mark over, and only when it is older than the
refresh policies reach at once (e.g. a journal replayed after an outage): only
a continuous aggregate's owner may refresh it, so a TimescaleDB job that runs
as the owner does (``collector_refresh_late_candles``, migration 008), and this
job reports it as failing when a hand-over waits too long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from collector.core.times import IST
from collector.db.connect import TRANSIENT_ERRORS
from collector.exceptions import AccessForbidden, CollectorError, TokenRejected
from collector.metrics import Job, SupervisorMetrics

__all__ = ["Jobs", "apply_retention_policy", "candles_mode"]

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]
LEVELS = ("candles_1m", "candles_5m", "candles_15m", "candles_1h", "candles_1d")
# Continuous aggregates aggregate recent data in real time and their policies
# refresh what is a few minutes old; only older late data needs a refresh here.
REALTIME_COVERS = timedelta(minutes=15)
# The database's job takes hand-overs every minute; one still waiting after this is a failure.
REFRESH_OVERDUE = timedelta(minutes=30)
# Take every journal's mark at once (the oldest is returned as dirty_since).
_TAKE_MARKS = (
    "WITH taken AS (UPDATE journal_positions p SET dirty_since = NULL FROM ("
    "  SELECT journal, dirty_since FROM journal_positions WHERE dirty_since IS NOT NULL FOR UPDATE"
    ") old WHERE p.journal = old.journal RETURNING old.dirty_since) "
)


async def candles_mode(conn: asyncpg.Connection) -> str:
    """'continuous_aggregates' or 'scheduled_refresh', as the migration decided."""
    value = await conn.fetchval("SELECT value FROM storage_info WHERE key = 'candles'")
    return str(value)


async def apply_retention_policy(conn: asyncpg.Connection, days: int | None) -> None:
    """Where TimescaleDB has policies, make the ticks retention policy match ``days``.

    Needs the table's owner, so it runs with the migrations.
    """
    if await candles_mode(conn) != "continuous_aggregates":
        return
    await conn.execute("SELECT remove_retention_policy('ticks', if_exists => true)")
    if days is not None:
        await conn.execute(
            "SELECT add_retention_policy('ticks', drop_after => $1::interval)", timedelta(days=days)
        )
        logger.info("retention policy: ticks older than %d days are dropped", days)


class Jobs:
    """The collector's periodic work, instrumented with run/failure metrics."""

    def __init__(
        self, *, connect: Connect, metrics: SupervisorMetrics, retention_days: int | None = None
    ) -> None:
        self._connect = connect
        self._metrics = metrics
        self._retention_days = retention_days
        self.mode: str | None = None

    async def run(self, name: Job, work: Callable[[asyncpg.Connection], Awaitable[None]]) -> bool:
        """Run ``work`` on a fresh connection as job ``name``: counted, logged, never raised."""
        self._metrics.job_runs.labels(name).inc()
        try:
            conn = await self._connect()
            try:
                await work(conn)
            finally:
                await conn.close()
        except (TokenRejected, AccessForbidden) as exc:
            # Not this job's failure: the feed's alerts and collector_rest_failures_total show a
            # token Upstox refuses, and counting it here too would page twice for one cause.
            logger.warning("job %s skipped: %s", name, exc)
            return False
        except (CollectorError, *TRANSIENT_ERRORS) as exc:  # Upstox or the database said no: one line
            self._metrics.job_failures.labels(name).inc()
            logger.error("job %s failed: %s: %s", name, type(exc).__name__, exc)
            return False
        except Exception:
            self._metrics.job_failures.labels(name).inc()
            logger.exception("job %s failed", name)
            return False
        self._metrics.job_last_success.labels(name).set(time.time())
        return True

    async def refresh_candles(self) -> bool:
        """Recompute candles from the oldest tick committed since the last refresh."""
        return await self.run("candle_refresh", self._refresh)

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        if self.mode is None:
            self.mode = await candles_mode(conn)
        if self.mode == "continuous_aggregates":
            await self._hand_over(conn)
            return
        # Take the marks in a short transaction of their own: the writers update
        # the same rows with every batch and must not wait for a long refresh.
        since = await conn.fetchval(_TAKE_MARKS + "SELECT min(dirty_since) FROM taken")
        if since is None:
            return
        try:
            await conn.execute("SELECT refresh_candles($1)", since)
        except BaseException:
            await conn.execute("UPDATE journal_positions SET dirty_since = least(dirty_since, $1)", since)
            raise

    async def _hand_over(self, conn: asyncpg.Connection) -> None:
        # Marks and hand-over move in one statement, so none is lost. Marks that
        # real-time aggregation and the refresh policies cover are just cleared.
        since = await conn.fetchval(
            _TAKE_MARKS + "INSERT INTO candle_refresh_requests (since) SELECT min(dirty_since) FROM taken "
            "HAVING min(dirty_since) < now() - $1::interval RETURNING since",
            REALTIME_COVERS,
        )
        if since is not None:
            logger.info("late ticks since %s: candle refresh handed to the database's job", since)
        waiting = await conn.fetchval(
            "SELECT min(requested_at) FROM candle_refresh_requests WHERE requested_at < now() - $1::interval",
            REFRESH_OVERDUE,
        )
        if waiting is not None:
            raise CollectorError(
                f"late candles handed over at {waiting} are not refreshed yet: check the TimescaleDB job "
                "collector_refresh_late_candles (timescaledb_information.job_errors)"
            )

    async def retention(self) -> bool:
        return await self.run("retention", self._retention)

    async def _retention(self, conn: asyncpg.Connection) -> None:
        if self._retention_days is None or await candles_mode(conn) == "continuous_aggregates":
            return  # there, a retention policy (set by `collector migrate`) drops chunks
        keep = timedelta(days=self._retention_days)
        dropped = await conn.fetch("SELECT drop_chunks('ticks', older_than => now() - $1::interval)", keep)
        if dropped:
            logger.info("retention dropped %d chunks of ticks", len(dropped))

    def schedule(
        self,
        scheduler: AsyncIOScheduler,
        *,
        refresh_interval_s: float,
        sync: Callable[[], Awaitable[bool]] | None = None,
        sync_time: str,
    ) -> None:
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 300}
        scheduler.add_job(self.refresh_candles, "interval", seconds=refresh_interval_s, **common)
        scheduler.add_job(self.retention, "interval", hours=1, next_run_time=datetime.now(UTC), **common)
        if sync is not None:
            hh, mm = (int(x) for x in sync_time.split(":"))
            scheduler.add_job(sync, "cron", hour=hh, minute=mm, timezone=IST, **common)
