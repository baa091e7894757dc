"""Series the supervisor computes when Prometheus scrapes: true in every state of every process.

Most series are set by the process that does the work (:mod:`collector.metrics`).
Some cannot be: they must be true exactly when that process is in trouble,
or when nobody is connected at all. These are computed here, on each scrape,
from facts that hold whatever the children do:

- **Journals**: end, committed position, lag and the age of the oldest
  uncommitted record, read from each journal folder
  (:mod:`collector.journal.progress`): true while the database is away, while
  a writer is behind, while it restarts.
- **Market status**: the connections' ``market_info`` reports while they are
  connected and newer than the calendar's last open or close, the exchange
  calendar otherwise (:class:`~collector.core.market.MarketView`).
- **Feeds down**: since when each connection has not been subscribed, from the
  supervisor's own record of its children.
- **The database's own work**: TimescaleDB's jobs and storage
  (:mod:`collector.db.stats`), read on a connection of its own, at most every
  ``max_age_s``, each statement within a timeout, in the background: a scrape
  waits for fresh figures at most ``wait_s`` and otherwise takes the last ones,
  so it costs the write path nothing and a slow or absent database delays it
  by a fraction of a second; ``collector_timescaledb_stats_timestamp_seconds``
  says how fresh the figures are.

The scrape runs in the metrics server's thread; the state lives on the
supervisor's event loop, so the thread asks the loop for one
:class:`Snapshot` and waits a bounded time for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.core.calendar import SEGMENTS, Calendar
from collector.core.market import MarketView
from collector.db.stats import DatabaseStats, read_stats
from collector.journal.progress import JournalProgress, progress

__all__ = ["DatabaseWatch", "Observed", "ScrapeView", "Snapshot", "families"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Snapshot:
    """What the supervisor knows at one scrape."""

    now: float
    journals: Mapping[int, JournalProgress] = field(default_factory=dict)
    market_open: Mapping[str, bool] = field(default_factory=dict)
    feed_down_since: Mapping[int, float] = field(default_factory=dict)  # only connections that are down
    database: DatabaseStats | None = None
    database_read_at: float | None = None
    # Retention the collector applies itself (the Apache build has no retention policy): relation -> s.
    retention_s: Mapping[str, float] = field(default_factory=dict)


class Observed:
    """The supervisor's record of what its children cannot say themselves, and the snapshot of it.

    Feed processes report their connection (``Connected``, ``Disconnected``)
    and what Upstox says of the market (``MarketInfo``); the supervisor also
    knows when a feed process starts and ends. Everything here runs on the
    supervisor's event loop.
    """

    def __init__(
        self,
        *,
        journal_root: Path,
        calendar: Callable[[], Calendar],
        database: DatabaseWatch | None = None,
        retention_s: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = journal_root
        self._calendar = calendar
        self.market = MarketView(calendar())
        self.database = database
        self.retention_s = dict(retention_s or {})
        self._clock = clock
        self._down_since: dict[int, float] = {}  # feeds that run and are not subscribed

    def follow_calendar(self, calendar: Callable[[], Calendar]) -> None:
        """Take the calendar from ``calendar`` from now on (the holidays keep it current)."""
        self._calendar = calendar

    def feed_started(self, connection: int) -> None:
        """A feed process starts: down until it subscribes (since when it went down, if it was)."""
        self._down_since.setdefault(connection, self._clock())

    def feed_connected(self, connection: int) -> None:
        self._down_since.pop(connection, None)
        self.market.connected(connection)

    def feed_disconnected(self, connection: int, at: datetime) -> None:
        self._down_since.setdefault(connection, at.timestamp())
        self.market.disconnected(connection)

    def feed_exited(self, connection: int) -> None:
        """A feed process ended (and will be restarted): whatever it held, it is down now."""
        self._down_since.setdefault(connection, self._clock())
        self.market.disconnected(connection)

    def market_info(self, connection: int, statuses: Mapping[str, str], at: datetime) -> None:
        for segment, status in statuses.items():
            self.market.report(connection, segment, status, at)

    def journals(self) -> dict[int, Path]:
        try:
            return {int(p.name): p for p in self._root.iterdir() if p.is_dir() and p.name.isdigit()}
        except OSError:
            return {}

    async def snapshot(self) -> Snapshot:
        now = self._clock()
        self.market.calendar = self._calendar()
        at = datetime.fromtimestamp(now, UTC)
        snap = Snapshot(
            now=now,
            journals={c: progress(path) for c, path in sorted(self.journals().items())},
            market_open={segment: self.market.is_open(segment, at) for segment in SEGMENTS},
            feed_down_since=dict(self._down_since),
            retention_s=self.retention_s,
        )
        if self.database is not None:
            snap.database, snap.database_read_at = await self.database.current()
        return snap


class ScrapeView(Collector):
    """A prometheus_client collector that asks the supervisor's loop for a :class:`Snapshot`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        snapshot: Callable[[], Awaitable[Snapshot]],
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self._loop = loop
        self._snapshot = snapshot
        self._timeout_s = timeout_s

    def collect(self) -> Iterable[Metric]:
        if self._loop.is_closed():
            return []

        async def take() -> Snapshot:
            return await self._snapshot()

        future = asyncio.run_coroutine_threadsafe(take(), self._loop)
        try:
            snap = future.result(self._timeout_s)
        except Exception as exc:  # a busy or stopping loop: this scrape goes without these series
            future.cancel()
            logger.warning("scrape: the supervisor's state was not ready in time (%s)", type(exc).__name__)
            return []
        try:
            return families(snap)
        except Exception:  # never take the rest of /metrics down with these
            logger.exception("scrape: the supervisor's series could not be built")
            return []


class DatabaseWatch:
    """TimescaleDB's jobs and storage, re-read when older than ``max_age_s``; never raises."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_age_s: float = 10.0,
        timeout_s: float = 3.0,
        wait_s: float = 0.5,
    ) -> None:
        self._connect = connect
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.stats: DatabaseStats | None = None
        self.read_at: float | None = None
        self._conn: asyncpg.Connection | None = None
        self._reading: asyncio.Task[None] | None = None
        self._failing = False

    async def current(self) -> tuple[DatabaseStats | None, float | None]:
        """The figures; stale ones are re-read in the background, waited for at most ``wait_s``."""
        if self.read_at is None or time.time() - self.read_at >= self.max_age_s:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read(), name="database stats")
            await asyncio.wait({self._reading}, timeout=self.wait_s)
        return self.stats, self.read_at

    async def _read(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncio.wait_for(self._connect(), self.timeout_s)
            self.stats = await asyncio.wait_for(
                read_stats(self._conn, timeout_s=self.timeout_s), self.timeout_s * 2
            )
            self.read_at = time.time()
            if self._failing:
                logger.info("database stats: reading again")
            self._failing = False
        except Exception as exc:  # the database is away or slow: keep the last figures, say so once
            if not self._failing:
                logger.warning("database stats: cannot read them (%s: %s)", type(exc).__name__, exc)
            self._failing = True
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        await self._drop()


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"collector_{name}", doc, labels=list(labels))


def families(snap: Snapshot) -> list[Metric]:
    """Every series computed at scrape time, from one snapshot."""
    return [*_journal(snap), *_market(snap), *_database(snap)]


def _journal(snap: Snapshot) -> list[Metric]:
    end = _gauge(
        "journal_end_position_bytes", "Position after the last byte the feed journaled", ["connection"]
    )
    committed = _gauge(
        "journal_committed_position_bytes", "Journal position committed to the database", ["connection"]
    )
    lag = _gauge(
        "journal_lag_bytes", "Journal bytes read from the socket and not yet committed", ["connection"]
    )
    oldest = _gauge(
        "journal_oldest_uncommitted_timestamp_seconds",
        "Receive time of the oldest record not yet committed (the scrape's time when none is)",
        ["connection"],
    )
    disk = _gauge("journal_bytes", "Bytes of the connection's journal on disk", ["connection"])
    for connection, p in sorted(snap.journals.items()):
        c = str(connection)
        end.add_metric([c], p.end)
        committed.add_metric([c], p.committed)
        lag.add_metric([c], p.lag_bytes)
        oldest.add_metric([c], p.oldest_uncommitted if p.oldest_uncommitted is not None else snap.now)
        disk.add_metric([c], p.disk_bytes)
    return [end, committed, lag, oldest, disk]


def _market(snap: Snapshot) -> list[Metric]:
    market = _gauge(
        "market_open",
        "1 while the segment is open: Upstox's market_info while connected, the exchange calendar otherwise",
        ["segment"],
    )
    for segment, is_open in sorted(snap.market_open.items()):
        market.add_metric([segment], 1 if is_open else 0)
    down = _gauge(
        "feed_down_since_timestamp_seconds",
        "Since when the connection has not been subscribed (present only while it is not)",
        ["connection"],
    )
    for connection, since in sorted(snap.feed_down_since.items()):
        down.add_metric([str(connection)], since)
    return [market, down]


def _database(snap: Snapshot) -> list[Metric]:
    job_labels = ["job_id", "proc", "relation"]
    runs = CounterMetricFamily(
        "collector_timescaledb_job_runs", "Runs of the TimescaleDB job", labels=job_labels
    )
    failures = CounterMetricFamily(
        "collector_timescaledb_job_failures", "Failed runs of the TimescaleDB job", labels=job_labels
    )
    consecutive = _gauge(
        "timescaledb_job_consecutive_failures", "Failed runs of the TimescaleDB job since its last success",
        job_labels,
    )  # fmt: skip
    last_ok = _gauge(
        "timescaledb_job_last_run_success", "1 if the job's last run succeeded, 0 if it failed (absent: not run yet)",
        job_labels,
    )  # fmt: skip
    success = _gauge(
        "timescaledb_job_last_success_timestamp_seconds",
        "When the job last succeeded (absent: never)",
        job_labels,
    )
    next_start = _gauge(
        "timescaledb_job_next_start_timestamp_seconds",
        "When the scheduler means to run the job next",
        job_labels,
    )
    interval = _gauge("timescaledb_job_interval_seconds", "The job's schedule interval", job_labels)
    rel = ["relation"]
    size = _gauge("timescaledb_relation_bytes", "Bytes on disk of the relation (data, indexes, TOAST)", rel)
    chunks = _gauge("timescaledb_chunks", "Chunks of the relation", rel)
    converted = _gauge("timescaledb_columnstore_chunks", "Chunks of the relation in the columnstore", rel)
    stored = _gauge(
        "timescaledb_columnstore_bytes",
        "Bytes of the columnstore chunks before and after conversion (stage)",
        [*rel, "stage"],
    )
    oldest = _gauge("timescaledb_oldest_chunk_timestamp_seconds", "Start of the relation's oldest chunk", rel)
    chunk_interval = _gauge(
        "timescaledb_chunk_interval_seconds", "Time each chunk of the relation spans", rel
    )
    retention = _gauge(
        "timescaledb_retention_seconds", "Age past which the relation's chunks are dropped", rel
    )
    read_at = _gauge(
        "timescaledb_stats_timestamp_seconds", "When the figures above were read from the database"
    )
    out: list[Metric] = [
        runs, failures, consecutive, last_ok, success, next_start, interval,
        size, chunks, converted, stored, oldest, chunk_interval, retention, read_at,
    ]  # fmt: skip
    for relation, seconds in snap.retention_s.items():
        retention.add_metric([relation], seconds)
    stats = snap.database
    if stats is None or snap.database_read_at is None:
        return out
    read_at.add_metric([], snap.database_read_at)
    for j in stats.jobs:
        labels = [str(j.job_id), j.proc, j.relation]
        runs.add_metric(labels, j.runs)
        failures.add_metric(labels, j.failures)
        consecutive.add_metric(labels, j.consecutive_failures)
        interval.add_metric(labels, j.interval_s)
        if j.last_run_success is not None:
            last_ok.add_metric(labels, 1 if j.last_run_success else 0)
        if j.last_success is not None:
            success.add_metric(labels, j.last_success.timestamp())
        if j.next_start is not None:
            next_start.add_metric(labels, j.next_start.timestamp())
    for r in stats.relations:
        size.add_metric([r.relation], r.total_bytes)
        chunks.add_metric([r.relation], r.chunks)
        converted.add_metric([r.relation], r.compressed_chunks)
        if r.columnstore_before_bytes is not None and r.columnstore_after_bytes is not None:
            stored.add_metric([r.relation, "before"], r.columnstore_before_bytes)
            stored.add_metric([r.relation, "after"], r.columnstore_after_bytes)
        if r.oldest_chunk_start is not None:
            oldest.add_metric([r.relation], r.oldest_chunk_start.timestamp())
        if r.chunk_interval_s is not None:
            chunk_interval.add_metric([r.relation], r.chunk_interval_s)
    for relation, drop_after in stats.retention.items():
        if relation not in snap.retention_s:
            retention.add_metric([relation], drop_after.total_seconds())
    return out
