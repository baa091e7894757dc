"""The writer for one journal: tail → decode → sequence → batch → COPY, exactly once.

It reads the committed position and the sequencer's state from
``journal_positions``, seeks the journal there and goes on: every record after
the position is decoded, sequenced (:class:`~collector.core.sequencer.TickSequencer`)
and batched; each batch commits with the position it reached
(:class:`~collector.writer.store.BatchStore`). Nothing is held that the journal
does not hold: when anything fails (the database goes away, a commit's outcome
is unknown) the writer drops what it had, reloads position and state, and
reads the journal again from there. So a crash, an outage or a restart loses
nothing that was read and stores nothing twice, and memory stays bounded:
while the database is away the journal grows on disk instead.

Batches grow under load instead of waiting for a timer: while one batch is
being written the next one keeps filling (up to ``max_batch_rows`` times
``grow_factor``), and it is handed over as soon as the write finishes. When
idle, a batch waits at most ``flush_interval_s`` for company.

A caught-up writer does not poll: it sleeps until the feed rings the
journal's doorbell (:mod:`collector.journal.doorbell`), the write in flight
ends, the database closes the session, a drain is asked for, or the open
batch is due. The decoder hands it rows already in PostgreSQL's binary COPY
format (:mod:`collector.core.pgcopy`), which the store streams as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from collector.core.backoff import full_jitter
from collector.core.batch import Batch, Batcher
from collector.core.decode import decode_rows
from collector.core.market import MarketState
from collector.core.records import Gap, StatusChange
from collector.core.sequencer import TickSequencer
from collector.core.times import EPOCH, ist_day, ist_time
from collector.db.connect import CONNECT_TIMEOUT_S, TRANSIENT_ERRORS
from collector.exceptions import DecodeError, PositionConflict
from collector.journal.doorbell import Doorbell
from collector.journal.events import decode_event
from collector.journal.files import journal_id
from collector.journal.format import EVENT, FRAME, Record
from collector.journal.progress import open_committed, record_committed
from collector.journal.reader import JournalReader
from collector.metrics import WriterMetrics
from collector.options import WriterOptions
from collector.writer.store import BatchStore

__all__ = ["Writer"]

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# Start over from the committed position: the database is away (for now), or a
# commit whose outcome was unknown did happen.
RELOAD = (*TRANSIENT_ERRORS, PositionConflict)


class Writer:
    """Stores one journal's records, exactly once."""

    def __init__(
        self,
        directory: Path,
        *,
        connection: int,
        connect: Connect,
        metrics: WriterMetrics,
        options: WriterOptions,
        backoff: Callable[[], Iterator[float]] = lambda: full_jitter(base_s=0.5, cap_s=10.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.connection = connection
        self._label = str(connection)
        self._connect = connect
        self._metrics = metrics
        self._store = BatchStore(metrics)
        self.options = options
        self._backoff = backoff
        self._clock = clock
        self.journal = journal_id(directory)
        self._reader = JournalReader(directory)
        self._bell = Doorbell(directory)
        self._committed_fd = open_committed(directory)
        self._conn: asyncpg.Connection | None = None
        self._db_up: bool | None = None
        self.committed = -1  # the committed position, once known
        self._releasable = 0  # a commit at or past this position may free a segment
        self._skip_end = -1
        self.caught_up = asyncio.Event()  # set while everything on disk is committed

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, drain: asyncio.Event | None = None) -> None:
        """Store records until cancelled; once ``drain`` is set, return when all are stored.

        Never swallows its own cancellation: shutdown can always stop it.
        """
        drain = drain or asyncio.Event()
        delays = self._backoff()
        self._bell.open()
        try:
            while True:
                try:
                    await self._session(drain)
                    return
                except RELOAD as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from exc  # asyncpg may report a cancel as its own error
                    if not isinstance(exc, PositionConflict):
                        self._metrics.write_failures.labels("transient").inc()
                        self._set_db_up(False)
                    await self._drop_connection()
                    delay = next(delays)
                    logger.warning(
                        "connection %s: write failed (%s: %s); reloading from the journal in %.1fs",
                        self.connection, type(exc).__name__, exc, delay,
                    )  # fmt: skip
                    if drain.is_set() and isinstance(exc, OSError | TimeoutError):
                        delay = min(delay, 1.0)
                    await asyncio.sleep(delay)
        finally:
            await self._drop_connection()
            self._reader.close()
            self._bell.close()
            os.close(self._committed_fd)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            # Bounded even when a test's or a caller's connect() is not.
            self._conn = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT_S + 5)
        return self._conn

    async def _drop_connection(self) -> None:
        # terminate(), not close(): never wait on a server that may be gone.
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _set_db_up(self, up: bool) -> None:
        if up != self._db_up:
            logger.info("connection %s: database %s", self.connection, "reachable" if up else "unreachable")
        self._db_up = up
        self._metrics.database_up.set(1 if up else 0)

    # -- one database session ---------------------------------------------------------

    async def _session(self, drain: asyncio.Event) -> None:
        conn = await self._connection()
        # Where a journal new to the database starts. Asked, not sought: seeking to 0 in a journal
        # whose first segments are committed and deleted would report them as lost.
        oldest = self._reader.oldest()
        position, state = await self._store.load(conn, self.journal, self.connection, oldest)
        self.committed = self._reader.seek(position)
        record_committed(self._committed_fd, self.committed)
        self._release()
        self._set_db_up(True)
        sequencer = TickSequencer()
        market = MarketState()
        if state is None:
            await self._seed(conn, sequencer)
        else:
            saved = json.loads(state)
            sequencer.load(saved["ticks"])
            market.status = dict(saved.get("market", {}))
        opt = self.options
        batcher = Batcher(
            max_batch_rows=opt.max_batch_rows,
            flush_interval_s=opt.flush_interval_s,
            grow_factor=opt.grow_factor,
        )
        start = end = self.committed
        first_ns = 0
        inflight: asyncio.Task[None] | None = None
        batch: Batch | None = None
        rechecked = False
        closed = asyncio.Event()

        def on_close(_: object) -> None:
            closed.set()

        conn.add_termination_listener(on_close)
        try:
            while True:
                records = self._reader.read(opt.read_bytes)
                self._report_skipped()
                if records:
                    rechecked = False
                    if not first_ns:
                        first_ns = records[0].time_ns
                    self._add(records, batcher, sequencer, market)
                    end = records[-1].end
                elif end < self._reader.position:
                    end = self._reader.position  # only corruption was skipped: commit past it
                if inflight is not None and inflight.done():
                    inflight.result()  # a failure raises here, and the session starts over
                    assert batch is not None
                    self._committed(batch)
                    inflight = batch = None
                now = self._clock()
                if inflight is None and end > start and batcher.due(now):
                    batch = batcher.seal() or Batch()
                    batch.journal, batch.start, batch.end = self.journal, start, end
                    batch.first_received_ns = first_ns
                    batch.state = f'{{"ticks": {sequencer.dump_json()}, "market": {json.dumps(market.status)}}}'.encode()
                    inflight = asyncio.create_task(self._store.write(conn, batch))
                    start, first_ns = end, 0
                if records:
                    if inflight is not None and batcher.full():
                        await asyncio.wait({inflight})  # full: let the journal hold the rest
                    else:
                        await asyncio.sleep(0)  # let the write in flight move
                    continue
                # Caught up with the journal for now.
                if not rechecked:
                    # Forget the rings so far and look once more: whatever was
                    # appended before this point is read now, after it rings again.
                    self._bell.clear()
                    rechecked = True
                    continue
                rechecked = False
                idle = inflight is None and end == start
                if idle:
                    if self._reader.position >= self._reader.end():
                        self.caught_up.set()
                        if drain.is_set():
                            return
                else:
                    self.caught_up.clear()
                if idle and conn.is_closed():
                    # Nothing to write, but the server ended the session (a restart, a
                    # terminate, a lost network): say so now, not at the next batch.
                    raise asyncpg.ConnectionDoesNotExistError("the database closed the connection")
                # Sleep until something happens: the feed appends (the doorbell), the
                # write in flight ends, the database closes the session, a drain is
                # asked for, or the open batch is due (the one timer: time is its event).
                timeout = opt.idle_check_s if self._bell.available else opt.poll_interval_s
                listen = True
                if inflight is None and end > start:
                    due_in = opt.flush_interval_s - batcher.age(now) if len(batcher) else 0.0
                    timeout = 0.0 if drain.is_set() else min(timeout, max(due_in, 0.0))
                    # An open batch waits for its time, not for each frame: what comes
                    # meanwhile is read once, when it is due (a wake per frame cost more
                    # than the frame at low rates).
                    listen = False
                if timeout > 0:
                    waits: set[asyncio.Future[Any]] = set()
                    if idle:  # otherwise the write in flight, or the next one, meets a closed session
                        waits.add(asyncio.ensure_future(closed.wait()))
                    if listen:
                        waits.add(asyncio.ensure_future(self._bell.wait()))
                    if not drain.is_set():
                        waits.add(asyncio.ensure_future(drain.wait()))
                    if inflight is not None:
                        waits.add(inflight)
                    try:
                        if waits:
                            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                        else:
                            await asyncio.sleep(timeout)
                    finally:
                        for w in waits:
                            if w is not inflight:
                                w.cancel()
                else:
                    await asyncio.sleep(0)
        finally:
            conn.remove_termination_listener(on_close)
            if inflight is not None and not inflight.done():
                # Abort the socket first: a cancelled asyncpg call can otherwise
                # wait forever (MagicStack/asyncpg#873). Then wait, but bounded.
                await self._drop_connection()
                inflight.cancel()
                await asyncio.wait({inflight}, timeout=5.0)
                if inflight.done() and not inflight.cancelled():
                    inflight.exception()  # retrieved: the connection was aborted on purpose

    def _committed(self, batch: Batch) -> None:
        self.committed = batch.end
        m = self._metrics
        m.batches.inc()
        m.batch_rows.observe(len(batch.ticks))
        if batch.first_received_ns:
            m.commit_latency.observe(max(time.time() - batch.first_received_ns / 1e9, 0.0))
        # For the supervisor, which reads the lag from the journal folder whatever state we are in.
        record_committed(self._committed_fd, batch.end)
        self._release()

    def _release(self) -> None:
        """Delete the segments wholly committed: tried only once the commit can have reached a newer one."""
        if self.committed < self._releasable:
            return
        freed = self._reader.release(self.committed)
        if freed:
            logger.debug("connection %s: %d journal bytes released", self.connection, freed)
        # Where the next attempt can free something: the second segment's start, or today's end.
        _, _, self._releasable = self._reader.usage()

    def _report_skipped(self) -> None:
        skipped, self._reader.skipped = self._reader.skipped, []
        for position, size in skipped:
            self._metrics.journal_skipped_bytes.labels(self._label).inc(size)
            continued = position == self._skip_end  # the same stretch, read in another chunk
            self._skip_end = position + size
            if continued:
                continue
            self._metrics.journal_skipped.labels(self._label).inc()
            logger.error(
                "connection %s: journal %s: corrupt or torn bytes skipped at position %d (%d bytes so far)",
                self.connection, self.directory, position, size,
            )  # fmt: skip

    async def _seed(self, conn: asyncpg.Connection, sequencer: TickSequencer) -> None:
        """A journal seen for the first time continues from today's latest stored ticks."""
        now = datetime.now(UTC)
        day_start = ist_time(ist_day(now))
        rows = await conn.fetch(
            "SELECT DISTINCT ON (instrument_key) instrument_key, time, ltp, vtt FROM ticks "
            "WHERE time >= $1 ORDER BY instrument_key, time DESC, received_at DESC",
            day_start,
        )
        for r in rows:
            sequencer.seed(r["instrument_key"], r["time"], r["ltp"], r["vtt"])
        if rows:
            logger.info(
                "connection %s: continuing from the latest ticks of %d instruments",
                self.connection,
                len(rows),
            )

    # -- decoding ---------------------------------------------------------------------

    def _add(
        self, records: list[Record], batcher: Batcher, sequencer: TickSequencer, market: MarketState
    ) -> None:
        now = self._clock()
        kinds: Counter[str] = Counter()
        duplicates = sequencer.duplicates
        m = self._metrics
        for rec in records:
            if rec.kind == FRAME:
                received_us = rec.time_ns // 1000
                try:
                    frame = decode_rows(rec.payload, received_us)
                except DecodeError as exc:
                    received_at = EPOCH + timedelta(microseconds=received_us)
                    m.decode_errors.labels(self._label).inc()
                    logger.warning(
                        "connection %s: undecodable frame at %d: %s", self.connection, rec.end, exc
                    )
                    reject = json.dumps({"position": rec.end, "received_at": received_at.isoformat(),
                                         "frame_hex": rec.payload[:65536].hex()})  # fmt: skip
                    batcher.add(now, rejects=[("frames", str(exc)[:1000], reject)])
                    continue
                changed: list[StatusChange] = market.update(frame.statuses) if frame.statuses else []
                rows: list[bytes] = []
                oldest = None
                if frame.ticks:
                    kinds.update(t.kind for t in frame.ticks)
                    rows, oldest = sequencer.rows(frame.ticks)
                    m.exchange_latency.observe(max(received_us - frame.feed_time_us, 0) / 1e6)
                batcher.add(now, rows, frame.bars, changed, oldest_tick_us=oldest)
            elif rec.kind == EVENT:
                try:
                    event = decode_event(rec.payload)
                except (ValueError, KeyError, TypeError) as exc:
                    logger.error("connection %s: bad event record at %d: %s", self.connection, rec.end, exc)
                    continue
                if isinstance(event, Gap):
                    batcher.add(now, gaps=[event])
                else:
                    batcher.add(now, sessions=[event])
            # TEXT records are server messages: counted and logged by the feed, kept in the journal.
        if sequencer.duplicate_kinds:
            kinds.subtract(sequencer.duplicate_kinds)
            sequencer.duplicate_kinds.clear()
        for kind, n in kinds.items():
            if n:
                m.ticks.labels(kind).inc(n)
        if sequencer.duplicates != duplicates:
            m.duplicates.labels("snapshot").inc(sequencer.duplicates - duplicates)
