"""The supervisor's gap work: holidays into the calendar, and the backfill, when it is due.

The calendar (:mod:`collector.core.calendar`) decides which time without a socket
was a gap; it needs Upstox's holiday list, cached in the database and fetched
at start-up (unless fetched today) and daily at 06:05 IST. Feed processes get
the calendar before their first connection (the first session of a start-up
records the time since the last run) and again when it changes.

The backfill (:mod:`collector.db.backfill`) runs shortly after a reconnect
(reconnects close together share one run), when a pending gap's last minute
is over, and every few minutes; one run at a time, through the collector's one
REST limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from collector.core.calendar import Calendar, Holiday
from collector.core.shards import Shard
from collector.core.times import IST
from collector.db.backfill import Backfill
from collector.db.holidays import fetched_today, load_holidays, store_holidays
from collector.db.jobs import Jobs
from collector.ipc.messages import NewCalendar
from collector.metrics import SupervisorMetrics
from collector.supervisor.children import Child
from collector.supervisor.upstox import UpstoxRest

__all__ = ["GapWork"]

logger = logging.getLogger(__name__)


class GapWork:
    """Holidays and backfill for one collector."""

    # A backfill runs this long after a reconnect, then every BACKFILL_EVERY_S;
    # authorize waits at most HOLIDAYS_WAIT_S for the holidays.
    BACKFILL_DEBOUNCE_S = 3.0
    BACKFILL_EVERY_S = 300.0
    GAP_ROW_WAIT_S = 20.0
    HOLIDAYS_WAIT_S = 15.0

    def __init__(
        self,
        *,
        upstox: UpstoxRest,
        jobs: Jobs,
        metrics: SupervisorMetrics,
        calendar: Calendar,
        feeds: Callable[[], Iterable[Child]],
        shard: Callable[[int], Shard | None],
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self.upstox = upstox
        self.backfill = Backfill(upstox, metrics=metrics)
        self.jobs = jobs
        self.calendar = calendar
        self._feeds = feeds
        self._shard = shard
        self._calendar_ready = asyncio.Event()
        self._calendar_version = 0
        self._calendar_sent: dict[int, tuple[int, int]] = {}  # connection -> (pid, version)
        self._backfill_due: float | None = None
        self._backfill_timer: asyncio.Task[None] | None = None
        self._awaited: list[tuple[int, datetime]] = []
        self._tasks = tasks  # the collector's: cancelled at its shutdown

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        """Holidays now and daily; the backfill on a schedule."""
        self._tasks.append(asyncio.create_task(self._first_holidays(), name="holidays"))
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600}
        scheduler.add_job(self._daily_holidays, "cron", hour=6, minute=5, timezone=IST, **common)
        scheduler.add_job(self._scheduled_backfill, "interval", seconds=self.BACKFILL_EVERY_S, **common)

    def connected(self, connection: int, at: datetime) -> None:
        """A feed process subscribed at ``at``: backfill its gap soon."""
        self._backfill_soon(self.BACKFILL_DEBOUNCE_S, waiting_for=(connection, at))

    # -- holidays --------------------------------------------------------------------

    async def _scheduled_backfill(self) -> None:
        # A coroutine, so APScheduler runs it on the loop (plain functions go to a thread).
        self._backfill_soon(0.0)

    async def _first_holidays(self) -> None:
        try:
            await self.jobs.run("holiday_sync", lambda conn: self._sync_holidays(conn, always=False))
        finally:
            self._calendar_ready.set()

    async def _daily_holidays(self) -> None:
        await self.jobs.run("holiday_sync", lambda conn: self._sync_holidays(conn, always=True))

    async def _sync_holidays(self, conn: asyncpg.Connection, *, always: bool) -> None:
        """The cached holidays into the calendar; fetched first when asked or not fetched today."""
        try:
            holidays, fetched_at = await load_holidays(conn)
            if holidays:
                self._set_holidays(holidays)
            if always or not fetched_today(fetched_at):
                holidays = await store_holidays(conn, await self.upstox.holidays())
                self._set_holidays(holidays)
                logger.info("market holidays: %d days from Upstox's list", len(holidays))
        finally:
            await self._broadcast_calendar()

    def _set_holidays(self, holidays: list[Holiday]) -> None:
        self.calendar = Calendar(self.calendar.hours, holidays)
        self._calendar_version += 1

    async def send_calendar(self, child: Child, *, wait: bool = True) -> None:
        """Give a feed process the calendar with the holidays, once per process and change."""
        if wait and not self._calendar_ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calendar_ready.wait(), self.HOLIDAYS_WAIT_S)
        sent = (child.proc.pid if child.proc else 0, self._calendar_version)
        if self._calendar_sent.get(child.connection) != sent:
            await child.send(NewCalendar(self.calendar))
            self._calendar_sent[child.connection] = sent

    async def _broadcast_calendar(self) -> None:
        for child in list(self._feeds()):
            if child.proc is not None and child.proc.returncode is None:
                await self.send_calendar(child, wait=False)

    # -- backfill --------------------------------------------------------------------

    def _backfill_soon(self, delay_s: float, *, waiting_for: tuple[int, datetime] | None = None) -> None:
        """Run the backfill in ``delay_s`` (or earlier, if already due); one run at a time."""
        due = time.monotonic() + delay_s
        if self._backfill_due is None or due < self._backfill_due:
            self._backfill_due = due
        if waiting_for is not None:
            self._awaited.append(waiting_for)
        if self._backfill_timer is None or self._backfill_timer.done():
            self._backfill_timer = asyncio.create_task(self._backfill_when_due(), name="backfill")
            self._tasks.append(self._backfill_timer)

    async def _backfill_when_due(self) -> None:
        while self._backfill_due is not None:
            wait = self._backfill_due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))  # an earlier run may be asked for meanwhile
                continue
            self._backfill_due = None
            awaited, self._awaited = self._awaited, []

            async def work(conn: asyncpg.Connection, awaited: list[tuple[int, datetime]] = awaited) -> None:
                for connection, at in awaited:
                    await self._gap_committed(conn, connection, at)
                report = await self.backfill.run(conn)
                if report.retry_at is not None:  # a pending gap's last minute ends then
                    self._backfill_soon(max((report.retry_at - datetime.now(UTC)).total_seconds(), 1.0))

            await self.jobs.run("backfill", work)

    async def _gap_committed(self, conn: asyncpg.Connection, connection: int, when: datetime) -> None:
        """Wait (briefly) until the writer has committed what followed a reconnect, the gap included.

        The feed journals the gap before anything it reads after subscribing,
        so a tick received since then in the database means the gap is there
        too. Nothing is awaited when the calendar says the market was closed.
        """
        shard = self._shard(connection)
        if shard is None:
            return
        keys = [k for keys in shard.keys.values() for k in keys]
        if not keys or not self.calendar.open_spans(shard.segments(), when - timedelta(seconds=1), when):
            return
        deadline = time.monotonic() + self.GAP_ROW_WAIT_S
        while time.monotonic() < deadline:
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM feed_gaps WHERE connection = $1 AND ended_at = $2) OR EXISTS ("
                "SELECT 1 FROM ticks WHERE instrument_key = ANY($3::text[]) "
                "AND time >= $2 - INTERVAL '1 hour' AND received_at >= $2)",
                connection, when, keys,
            ):  # fmt: skip
                return
            await asyncio.sleep(0.5)
