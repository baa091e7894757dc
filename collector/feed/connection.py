"""One feed connection: connect, subscribe, read into the journal, reconnect forever.

Between two socket reads the connection does one thing: append the frame, with
its receive time, to its journal (:class:`~collector.journal.appender.JournalAppender`).
Decoding and storing happen in the writer process, so reading never waits on
them. The one frame looked into here is ``market_info`` (rare, and found by
its first two bytes), and only its ``segmentStatus``, read straight from the
wire (:func:`~collector.core.market.segment_status`): a feed process imports
neither protobuf nor the database driver. Market state lives on the feed
side, because liveness depends on it. Liveness comes from WebSocket ping/pong (websockets' keepalive,
plus an immediate ping when the socket is silent while its segments are open),
never from "no ticks for N seconds" alone: Upstox has no application
heartbeat and a closed market is silent.

Sessions (connected to closed) and gaps (down while a segment it carries was
open) go into the journal as events, so data flows one way. When the journal
reaches its size bound, or the disk refuses it, the connection closes the
socket and waits: nothing read is dropped, the feed falls behind instead and
the time without a socket is recorded as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import websockets
from websockets.asyncio.client import ClientConnection, connect

from collector.core.backoff import full_jitter
from collector.core.calendar import Calendar
from collector.core.market import MarketState, segment_status
from collector.core.records import FRAME_KINDS, MODES, FeedSession, Gap, Mode, StatusChange
from collector.core.requests import Method, chunked, encode_request, plan_changes
from collector.core.shards import Shard, segment_of
from collector.exceptions import (
    JournalWriteError,
    RateLimited,
    TokenRejected,
    UpstoxError,
    UpstoxNetworkError,
    UpstoxProtocolError,
    UpstoxTLSError,
    classify_http_status,
)
from collector.journal.appender import JournalAppender
from collector.journal.events import encode_event
from collector.journal.format import EVENT, FRAME, TEXT
from collector.metrics import FeedMetrics
from collector.options import FeedOptions

__all__ = ["Authorize", "FeedConnection"]

logger = logging.getLogger(__name__)

# Returns the one-time wss URL for one attempt; raises UpstoxError.
Authorize = Callable[[], Awaitable[str]]

# A FeedResponse's first field is ``type`` (field 1, varint) whenever it is not
# initial_feed (0, which proto3 omits): serializers write fields in number order.
_LIVE = b"\x08\x01"
_MARKET_INFO = b"\x08\x02"


class _JournalBlocked(Exception):
    """Reading must stop: the journal is full or unwritable."""


class FeedConnection:
    """Keeps one shard of the universe subscribed and journals what it reads."""

    def __init__(
        self,
        shard: Shard,
        *,
        authorize: Authorize,
        journal: JournalAppender,
        market: MarketState,
        metrics: FeedMetrics,
        options: FeedOptions,
        ssl_context: ssl.SSLContext | None = None,
        backoff: Callable[[], Iterator[float]] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        calendar: Calendar | None = None,
        down_since: datetime | None = None,
        on_connected: Callable[[datetime], None] = lambda at: None,
        on_disconnected: Callable[[datetime], None] = lambda at: None,
        on_market: Callable[[dict[str, str], datetime], None] = lambda statuses, at: None,
    ) -> None:
        self.shard = shard
        self.id = shard.shard_id
        self._label = str(shard.shard_id)
        self._authorize = authorize
        self.journal = journal
        self.market = market
        self._metrics = metrics
        self._opt = options
        self._ssl = ssl_context
        self._backoff = backoff or (
            lambda: full_jitter(base_s=self._opt.backoff_base_s, cap_s=self._opt.backoff_cap_s)
        )
        self._now = now
        self.calendar = calendar
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_market = on_market
        self._ws: ClientConnection | None = None
        # When data last came in: the journal's last record (the collector was
        # not running since), else the first connection attempt.
        self._down_since: datetime | None = down_since
        self._down_reason = "collector_down"
        self._attempts = 0  # connection attempts since the last session ended
        self._unwritten: list[bytes] = []  # events the disk refused, written when it takes them
        self._last_frame = time.monotonic()
        self.connected = asyncio.Event()

    # -- subscriptions ----------------------------------------------------------------

    async def set_keys(self, keys: dict[Mode, list[str]]) -> None:
        """Move to a new set of keys per mode without reconnecting.

        The supervisor plans shards within Upstox's limits; here they are only
        turned into unsub, change_mode and sub requests, in that order, so the
        connection never holds more than its limits at any moment.
        """
        unsub, moves, subs = plan_changes(self.shard.keys, keys)
        self.shard.keys = {m: list(v) for m, v in keys.items() if v}
        if unsub:
            await self._send("unsub", unsub, None)
        for mode, moved in moves.items():
            await self._send("change_mode", moved, mode)
        for mode, added in subs.items():
            await self._send("sub", added, mode)

    async def _send(self, method: Method, keys: list[str], mode: Mode | None) -> None:
        ws = self._ws
        if ws is None or not keys:
            return  # applied on the next (re)connect
        for chunk in chunked(keys, self._opt.chunk_size):
            await ws.send(encode_request(method, chunk, mode))  # bytes: a binary frame

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and read until cancelled; never returns on its own."""
        delays = self._backoff()
        while True:
            await self._wait_for_journal()
            try:
                ws = await self._connect()
            except UpstoxError as exc:
                self._metrics.connect_failures.labels(self._label, exc.reason).inc()
                delay = self._failure_delay(exc, delays)
                logger.warning("connection %s: %s; retrying in %.1fs", self.id, exc, delay)
                await asyncio.sleep(delay)
                continue
            started = time.monotonic()
            reason = await self._session(ws)
            self._metrics.reconnects.labels(self._label).inc()
            if time.monotonic() - started >= self._opt.healthy_after_s:
                delays = self._backoff()  # a healthy period resets the backoff
            delay = next(delays)
            logger.warning("connection %s closed (%s); reconnecting in %.1fs", self.id, reason, delay)
            await asyncio.sleep(delay)

    def _failure_delay(self, exc: UpstoxError, delays: Iterator[float]) -> float:
        delay = next(delays)
        if isinstance(exc, TokenRejected):
            # Hammering with a bad token helps nobody; the token is re-read each try.
            return max(delay, self._opt.token_retry_s)
        if isinstance(exc, RateLimited):
            return max(delay, exc.retry_after_s or 0.0, self._opt.rate_limit_retry_s)
        return delay

    async def _connect(self) -> ClientConnection:
        if self._down_since is None:
            self._down_since = self._now()
            self._down_reason = "start"
        self._attempts += 1
        self._metrics.connect_attempts.labels(self._label).inc()
        uri = await self._authorize()
        try:
            # For wss:// websockets verifies with ssl.create_default_context() unless
            # we pass a context; plain ws:// only when authorize returned one.
            tls = {"ssl": self._ssl} if uri.startswith("wss://") and self._ssl else {}
            return await connect(
                uri,
                **tls,  # type: ignore[arg-type]
                open_timeout=self._opt.open_timeout_s,
                ping_interval=self._opt.ping_interval_s,
                ping_timeout=self._opt.ping_timeout_s,
                max_size=self._opt.max_frame_bytes,
                close_timeout=5,
                compression=None,
            )
        except websockets.InvalidStatus as exc:
            raise classify_http_status(exc.response.status_code, "feed handshake") from None
        except ssl.SSLError as exc:
            raise UpstoxTLSError(f"feed TLS failure: {exc}") from None
        except websockets.InvalidHandshake as exc:
            raise UpstoxProtocolError(f"feed handshake failed: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise UpstoxNetworkError(f"feed connect failed: {exc or type(exc).__name__}") from None

    async def _session(self, ws: ClientConnection) -> str:
        """Subscribe and read until the socket closes; return why it closed."""
        self._ws = ws
        label = self._label
        metrics = self._metrics
        journal = self.journal
        watchdog: asyncio.Task[None] | None = None
        connected_at = self._now()
        reason = "closed"
        try:
            for mode, keys in self.shard.keys.items():
                await self._send("sub", keys, mode)
            self._mark_up(connected_at)
            watchdog = asyncio.create_task(self._watchdog(ws))
            frames = {kind: metrics.frames.labels(label, kind) for kind in FRAME_KINDS}
            received = metrics.bytes.labels(label)
            last_frame = metrics.last_frame.labels(label)
            max_bytes = self._opt.journal_max_bytes
            async for message in ws:
                self._last_frame = time.monotonic()
                if isinstance(message, str):
                    # JSON text frames are server messages (e.g. subscription errors), never ticks.
                    self._append(TEXT, message.encode())
                    metrics.text_messages.labels(label).inc()
                    logger.warning("connection %s: server message: %.300s", self.id, message)
                    continue
                received_ns = self._append(FRAME, message)
                received.inc(len(message))
                last_frame.set(received_ns / 1e9)
                head = message[:2]
                if head == _LIVE:
                    frames["live_feed"].inc()
                elif head == _MARKET_INFO:
                    frames["market_info"].inc()
                    self._market_info(message)
                else:
                    frames["initial_feed"].inc()
                if journal.disk_bytes() >= max_bytes:
                    raise _JournalBlocked(f"journal full ({max_bytes} bytes)")
        except websockets.ConnectionClosed:
            pass
        except (OSError, TimeoutError) as exc:
            reason = f"network: {exc}"
        except _JournalBlocked as exc:
            reason = str(exc)
            metrics.journal_full.labels(label).set(1)
            logger.error("connection %s: %s; closing the socket until it has room", self.id, exc)
            await ws.close(1000, "collector journal full")
        finally:
            self._ws = None
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            await ws.close()
            if ws.close_code is not None and not reason.startswith("journal"):
                reason = f"code {ws.close_code}" + (f" {ws.close_reason}" if ws.close_reason else "")
            self._mark_down(connected_at, reason)
        return reason

    def _append(self, kind: int, payload: bytes) -> int:
        """Journal one record; stop reading if the disk refuses it."""
        if self._unwritten:
            self._flush_events()
        try:
            return self.journal.append(kind, payload)
        except JournalWriteError as exc:
            self._metrics.journal_write_errors.labels(self._label).inc()
            raise _JournalBlocked(f"journal write failed: {exc}") from None

    def _market_info(self, message: bytes) -> None:
        heard = self._now()
        try:
            statuses = segment_status(message)
        except ValueError:
            return  # stored and counted by the writer
        changes = [
            StatusChange(segment, "normal", status, heard, heard) for segment, status in statuses.items()
        ]
        for s in self.market.update(changes):
            self._metrics.set_market_status(s.segment, s.status)
        # Every report, changed or not: the supervisor weighs what Upstox says by when it said it.
        self._on_market(statuses, heard)

    # -- sessions, gaps and the journal bound -----------------------------------------

    def _event(self, event: FeedSession | Gap) -> None:
        self._unwritten.append(encode_event(event))
        self._flush_events()

    def _flush_events(self) -> None:
        while self._unwritten:
            try:
                self.journal.append(EVENT, self._unwritten[0])
            except JournalWriteError:
                return  # kept for later; the gap covers the time meanwhile
            self._unwritten.pop(0)

    def _mark_up(self, connected_at: datetime) -> None:
        self._last_frame = time.monotonic()
        self._metrics.connected.labels(self._label).set(1)
        for mode in MODES:
            self._metrics.sub_active.labels(self._label, mode).set(len(self.shard.keys.get(mode, [])))
        logger.info("connection %s subscribed %d keys", self.id, self.shard.size)
        self.connected.set()
        down_since, self._down_since = self._down_since, None
        # A process whose very first attempt succeeds missed nothing; one whose
        # first attempts failed (a bad token at the open) did, from the first try.
        if down_since is not None and not (self._down_reason == "start" and self._attempts == 1):
            self._record_gap(down_since, connected_at)
        self._attempts = 0
        self._on_connected(connected_at)

    def _record_gap(self, start: datetime, end: datetime) -> None:
        """Record the time without a socket, where a market the shard trades was open.

        With a calendar, only the spans it says were open count (nothing else
        can tell while nobody listened). Without one, the whole span counts if
        a segment is open now, per Upstox's market_info.
        """
        segments = sorted(self.shard.segments())
        if self.calendar is not None:
            spans = self.calendar.open_spans(segments, start, end)
        elif self.market.any_open(segments):
            spans = [(start, end, segments)]
        else:
            spans = []
        for s, e, open_segments in spans:
            instruments = sorted(
                k for keys in self.shard.keys.values() for k in keys if segment_of(k) in open_segments
            )
            self._event(Gap(self.id, s, e, open_segments, self._down_reason, instruments))

    def _mark_down(self, connected_at: datetime, reason: str) -> None:
        self.connected.clear()
        self._metrics.connected.labels(self._label).set(0)
        for mode in MODES:
            self._metrics.sub_active.labels(self._label, mode).set(0)
        self._down_since = self._now()
        self._down_reason = "journal" if reason.startswith("journal") else "reconnect"
        self._event(FeedSession(self.id, connected_at, self._down_since, reason[:200]))
        self._on_disconnected(self._down_since)

    async def _wait_for_journal(self) -> None:
        """Before connecting: wait until the journal has room and the disk takes writes."""
        announced = False
        while self.journal.disk_bytes(0) >= self._opt.journal_max_bytes * 0.9 or not self.journal.writable():
            if self._down_since is None:
                self._down_since = self._now()
            if not announced:
                logger.error(
                    "connection %s: journal %s is full or unwritable (%d bytes on disk); waiting",
                    self.id, self.journal.directory, self.journal.disk_bytes(0),
                )  # fmt: skip
                announced = True
            self._metrics.journal_full.labels(self._label).set(1)
            await asyncio.sleep(self._opt.journal_retry_s)
        if self._unwritten:
            self._flush_events()
        if announced:
            logger.info("connection %s: the journal has room again", self.id)
        self._metrics.journal_full.labels(self._label).set(0)

    async def _watchdog(self, ws: ClientConnection) -> None:
        """Ping a socket that is silent while its segments are open; close it if no pong."""
        opt = self._opt
        check_every = max(min(opt.stall_timeout_s / 4, 5.0), 0.01)
        while True:
            await asyncio.sleep(check_every)
            silent = time.monotonic() - self._last_frame
            if silent < opt.stall_timeout_s or not self.market.any_open(self.shard.segments()):
                continue
            self._metrics.pings.labels(self._label).inc()
            try:
                pong = await ws.ping()
                await asyncio.wait_for(pong, opt.ping_timeout_s)
            except (TimeoutError, websockets.ConnectionClosed):
                logger.warning("connection %s: silent %.0fs while open and no pong", self.id, silent)
                await ws.close(code=1011, reason="stalled")
                return
            self._metrics.pongs.labels(self._label).inc()
            # Alive but quiet (an illiquid universe): look again after another period.
            self._last_frame = time.monotonic()
