"""The sink: a bounded queue from the feed, batches, and COPY into TimescaleDB.

Two tasks share the work so that reading never waits on the database:

- *intake* takes events from the queue, suppresses repeated snapshots and
  computes volume (:class:`~collector.sequencer.TickSequencer`), adds them to
  the open batch and seals it when full, or when due and the flusher is idle
  (so batches grow while a COPY is in flight);
- *flusher* writes sealed batches, oldest first (the spool before memory),
  each in one transaction together with its ``ingest_ledger`` row.

When the database is away, sealed batches wait in memory up to
``max_pending_rows`` rows or ``spill_after_s`` seconds, then go to the disk
spool; both are written back in order when it returns, and a spool left by a
crash is replayed at start-up. Rows the database rejects for good (data
errors) are isolated by bisection and stored in ``dead_letters`` with the
reason; everything else is retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import asyncpg

from collector.backoff import full_jitter
from collector.batch import Batch, Batcher
from collector.exceptions import SpoolFullError
from collector.market import MarketState
from collector.metrics import Metrics
from collector.records import Event, FeedSession, Frame, Gap
from collector.sequencer import IST, TickSequencer
from collector.sink.spool import Spool
from collector.sink.store import BatchStore

__all__ = ["Writer"]

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Writer:
    """Accepts feed events and stores them exactly once."""

    def __init__(
        self,
        *,
        connect: Connect,
        metrics: Metrics,
        spool: Spool,
        market: MarketState | None = None,
        queue_max_frames: int = 10_000,
        max_batch_rows: int = 5_000,
        flush_interval_s: float = 0.5,
        max_pending_rows: int = 500_000,
        spill_after_s: float = 5.0,
        backoff: Callable[[], Iterator[float]] = lambda: full_jitter(base_s=0.5, cap_s=10.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._metrics = metrics
        self._store = BatchStore(metrics)
        self._spool = spool
        self._market = market or MarketState()
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_max_frames)
        self._batcher = Batcher(max_batch_rows=max_batch_rows, flush_interval_s=flush_interval_s)
        self._sequencer = TickSequencer()
        self._pending: deque[Batch] = deque()
        self._pending_rows = 0
        self._max_pending_rows = max_pending_rows
        self._spill_after_s = spill_after_s
        self._backoff = backoff
        self._clock = clock
        self._conn: asyncpg.Connection | None = None
        self._db_up = False
        self._flushing = False
        self._wake = asyncio.Event()
        self._spool_space = asyncio.Event()
        self.oldest_committed: datetime | None = None  # earliest tick time since last taken
        self._publish_spool()

    # -- feed side ----------------------------------------------------------------------

    async def deliver(self, event: Event) -> None:
        """Hand an event over; waits only when the bounded queue is full."""
        await self.queue.put(event)

    # -- lifecycle -------------------------------------------------------------------

    async def seed(self, timeout_s: float = 30.0) -> None:
        """Continue the snapshot/volume rule from the latest stored tick of today."""
        now = datetime.now(UTC)
        day_start = datetime.combine((now + IST).date(), datetime.min.time(), UTC) - IST
        try:
            conn = await self._connection()
            rows = await conn.fetch(
                "SELECT DISTINCT ON (instrument_key) instrument_key, time, ltp, vtt FROM ticks "
                "WHERE time >= $1 ORDER BY instrument_key, time DESC, received_at DESC",
                day_start,
                timeout=timeout_s,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            logger.warning("could not read today's latest ticks (%s); starting without them", exc)
            await self._drop_connection()
            self._seed_from_spool()
            return
        for r in rows:
            self._sequencer.seed(r["instrument_key"], r["time"], r["ltp"], r["vtt"])
        logger.info("continuing from the latest ticks of %d instruments", len(rows))
        self._seed_from_spool()

    def _seed_from_spool(self) -> None:
        # A spool left by a crash is newer than the database: without this, the
        # snapshot after reconnecting would repeat ticks that wait in the spool.
        if not len(self._spool):
            return
        for batch in self._spool.iter_batches():
            for t in batch.ticks:
                self._sequencer.seed(t.instrument_key, t.time, t.ltp, t.vtt)

    async def run(self) -> None:
        """Run intake and flusher until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._intake())
            tg.create_task(self._flusher())

    async def close(self) -> None:
        """Close the database connection (after ``run`` was cancelled)."""
        await self._drop_connection()

    async def drain(self, timeout_s: float) -> bool:
        """After the feed stopped: store everything accepted, within ``timeout_s``.

        What cannot be committed in time goes to the spool. Returns True when
        everything was committed.
        """
        deadline = self._clock() + timeout_s
        # A cancelled run() may have left the connection inside a transaction.
        await self._drop_connection()
        while not self.queue.empty():
            self._accept(self.queue.get_nowait())
        self._seal()
        while (self._pending or len(self._spool)) and self._clock() < deadline:
            try:
                await asyncio.wait_for(self._flush_one(), max(deadline - self._clock(), 0.01))
            except TimeoutError:
                break
            except Exception as exc:  # the database is away: spill below
                logger.warning("drain: %s", exc)
                break
        self._spill_all()
        await self._drop_connection()
        return not self._pending and not len(self._spool)

    # -- intake ----------------------------------------------------------------------

    async def _intake(self) -> None:
        tick_s = min(self._batcher.flush_interval_s, 0.1)
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), tick_s)
            except TimeoutError:
                event = None
            if event is not None:
                self._accept(event)
                # Take what else is already queued without yielding per item.
                for _ in range(min(self.queue.qsize(), 1000)):
                    self._accept(self.queue.get_nowait())
            self._metrics.queue_depth.set(self.queue.qsize())
            now = self._clock()
            if self._should_seal(now):
                self._seal()
            if not self._db_up or self._pending_rows > self._max_pending_rows:
                # Away, or up but slower than the feed: memory stays bounded either way.
                self._maybe_spill(now)
            while self._spool_full():
                # Accepted data is never dropped: stop taking more until the spool drains.
                logger.error("spool full (%d bytes); pausing intake", self._spool.bytes)
                self._spool_space.clear()
                await self._spool_space.wait()

    def _should_seal(self, now: float) -> bool:
        # While a write is in flight the open batch keeps growing, up to ten
        # times max_batch_rows: under load, fewer and larger COPYs make fewer
        # round trips, which is what lets the writer catch up.
        busy = self._flushing and self._db_up
        if self._batcher.tick_rows >= self._batcher.max_batch_rows * (10 if busy else 1):
            return True
        return self._batcher.due(now) and not busy

    def _accept(self, event: Event) -> None:
        now = self._clock()
        if isinstance(event, Frame):
            changed = self._market.update(event.statuses)
            for s in changed:
                self._metrics.set_market_status(s.segment, s.status, self._market.is_open(s.segment))
            if event.ticks:
                before = self._sequencer.duplicates
                ticks = self._sequencer.process(event.ticks)
                self._metrics.duplicates.labels("snapshot").inc(self._sequencer.duplicates - before)
                lag = (event.ticks[0].received_at - event.feed_time).total_seconds()
                self._metrics.exchange_latency.observe(max(lag, 0.0))
                ticks_by_kind: dict[str, int] = {}
                for t in ticks:
                    ticks_by_kind[t.kind] = ticks_by_kind.get(t.kind, 0) + 1
                for kind, n in ticks_by_kind.items():
                    self._metrics.ticks.labels(kind).inc(n)
            else:
                ticks = []
            self._batcher.add(now, ticks, event.bars, changed)
        elif isinstance(event, FeedSession):
            self._batcher.add(now, sessions=[event])
        elif isinstance(event, Gap):
            self._batcher.add(now, gaps=[event])

    def _seal(self) -> None:
        batch = self._batcher.seal()
        if batch is not None:
            self._pending.append(batch)
            self._pending_rows += batch.rows
            self._metrics.pending_rows.set(self._pending_rows)
            self._wake.set()

    def _maybe_spill(self, now: float) -> None:
        """While the database is away, move what waits too long (or too much) to disk."""
        if self._batcher.age(now) > self._spill_after_s:
            self._seal()
        if self._pending and (
            self._pending_rows > self._max_pending_rows
            or now - self._pending[0].opened_at > self._spill_after_s
        ):
            self._spill_all()

    def _spill_all(self) -> None:
        self._seal()
        while self._pending:
            batch = self._pending[0]
            try:
                self._spool.append(batch)
            except SpoolFullError:
                break
            self._pending.popleft()
            self._pending_rows -= batch.rows
        self._metrics.pending_rows.set(self._pending_rows)
        self._publish_spool()

    def _spool_full(self) -> bool:
        return (
            self._pending_rows > self._max_pending_rows and self._spool.bytes >= self._spool.max_bytes * 0.99
        )

    def _publish_spool(self) -> None:
        self._metrics.spool_bytes.set(self._spool.bytes)
        self._metrics.spool_rows.set(self._spool.rows)

    # -- flusher ---------------------------------------------------------------------

    async def _flusher(self) -> None:
        delays = self._backoff()
        while True:
            if not self._pending and not len(self._spool):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._flush_one()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self._metrics.write_failures.labels("transient").inc()
                self._set_db_up(False)
                await self._drop_connection()
                delay = next(delays)
                logger.warning("write failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            delays = self._backoff()

    async def _flush_one(self) -> None:
        from_spool = bool(len(self._spool))
        batch = self._spool.peek() if from_spool else self._pending[0]
        if batch is None:  # spool counted a torn record only
            return
        self._flushing = True
        try:
            conn = await self._connection()
            started = self._clock()
            committed = await self._store.write(conn, batch)
            self._metrics.copy_seconds.observe(self._clock() - started)
        finally:
            self._flushing = False
        self._set_db_up(True)
        if from_spool:
            self._spool.ack()
            self._publish_spool()
            if committed:
                self._metrics.replayed.inc(batch.rows)
            self._spool_space.set()
        else:
            self._pending.popleft()
            self._pending_rows -= batch.rows
            self._metrics.pending_rows.set(self._pending_rows)
        if not committed:
            self._metrics.duplicates.labels("batch").inc()
            return
        self._metrics.batches.inc()
        self._metrics.batch_rows.observe(len(batch.ticks))
        if batch.ticks:
            oldest = min(t.received_at for t in batch.ticks)
            self._metrics.commit_latency.observe(max((datetime.now(UTC) - oldest).total_seconds(), 0.0))
            first = min(t.time for t in batch.ticks)
            if self.oldest_committed is None or first < self.oldest_committed:
                self.oldest_committed = first

    def take_oldest_committed(self) -> datetime | None:
        """The earliest tick time committed since the last call (for candle refresh)."""
        value, self.oldest_committed = self.oldest_committed, None
        return value

    def _set_db_up(self, up: bool) -> None:
        if up != self._db_up:
            logger.info("database %s", "reachable" if up else "unreachable")
        self._db_up = up
        self._metrics.database_up.set(1 if up else 0)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncio.wait_for(self._connect(), 15.0)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
