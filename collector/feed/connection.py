"""One feed connection: authorize, connect, subscribe, read, and reconnect forever.

Reading never waits on the database: each decoded frame is handed to
``deliver`` (the writer's bounded queue), and nothing else happens between
two reads. Liveness comes from WebSocket ping/pong (websockets' keepalive,
plus an immediate ping when the socket is silent while its segments are open),
never from "no ticks for N seconds" alone: Upstox has no application heartbeat
and a closed market is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import websockets
from websockets.asyncio.client import ClientConnection, connect

from collector.backoff import RateLimiter, full_jitter
from collector.decode import decode_frame
from collector.exceptions import (
    ConfigError,
    ConnectError,
    DecodeError,
    FeedNetworkError,
    FeedProtocolError,
    FeedTLSError,
    RateLimited,
    TokenRejected,
    classify_http_status,
)
from collector.feed.auth import TokenSource, authorize, token_expiry
from collector.market import MarketState
from collector.metrics import SEGMENTS, Metrics
from collector.protocol import DEFAULT_LIMITS, Limits, Method, Shard, chunked, encode_request, segment_of
from collector.records import MODES, Event, FeedSession, Gap, Mode

__all__ = ["FeedConnection", "FeedOptions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """Timing and sizing of a feed connection; seconds unless named otherwise."""

    chunk_size: int = 500
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    stall_timeout_s: float = 60.0
    healthy_after_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    token_retry_s: float = 60.0
    rate_limit_retry_s: float = 30.0
    max_frame_bytes: int = 16 * 1024 * 1024


def authorize_limiter(clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    """Authorize calls for the whole process: far below 50/s, 500/min, 2000/30 min."""
    return RateLimiter([(2, 1.0), (30, 60.0), (300, 1800.0)], clock=clock)


class FeedConnection:
    """Keeps one shard of the universe subscribed, reconnecting forever."""

    def __init__(
        self,
        shard: Shard,
        *,
        api_url: str,
        tokens: TokenSource,
        deliver: Callable[[Event], Awaitable[None]],
        market: MarketState,
        metrics: Metrics,
        limiter: RateLimiter,
        options: FeedOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
        ssl_context: ssl.SSLContext | None = None,
        backoff: Callable[[], Iterator[float]] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.shard = shard
        self.id = shard.shard_id
        self._label = str(shard.shard_id)
        self._api_url = api_url
        self._tokens = tokens
        self._deliver = deliver
        self._market = market
        self._metrics = metrics
        self._limiter = limiter
        self._opt = options or FeedOptions()
        self._limits = limits
        self._ssl = ssl_context
        self._backoff = backoff or (
            lambda: full_jitter(base_s=self._opt.backoff_base_s, cap_s=self._opt.backoff_cap_s)
        )
        self._now = now
        self._ws: ClientConnection | None = None
        self._down_since: datetime | None = None
        self.connected = asyncio.Event()
        self.sessions = 0  # completed subscriptions, for tests and logs
        self._publish_requested()

    # -- runtime subscription changes -------------------------------------------------

    async def subscribe(self, mode: Mode, keys: list[str]) -> None:
        """Add keys in ``mode``; raises ValueError past the connection's limits."""
        counts = {m: len(self.shard.keys.get(m, [])) for m in MODES}
        new = [k for k in keys if k not in self._all_keys()]
        counts[mode] += len(new)
        if not self._limits.fits(counts):
            raise ValueError(f"connection {self.id}: {len(new)} more {mode} keys exceed the limits")
        self.shard.keys.setdefault(mode, []).extend(new)
        self._publish_requested()
        await self._send("sub", new, mode)

    async def unsubscribe(self, keys: list[str]) -> None:
        drop = set(keys)
        for mode in list(self.shard.keys):
            self.shard.keys[mode] = [k for k in self.shard.keys[mode] if k not in drop]
        self._publish_requested()
        await self._send("unsub", keys, None)

    async def change_mode(self, mode: Mode, keys: list[str]) -> None:
        move = set(keys) & self._all_keys()
        counts = {m: len([k for k in self.shard.keys.get(m, []) if k not in move]) for m in MODES}
        counts[mode] += len(move)
        if not self._limits.fits(counts):
            raise ValueError(f"connection {self.id}: change_mode to {mode} exceeds the limits")
        for m in list(self.shard.keys):
            self.shard.keys[m] = [k for k in self.shard.keys[m] if k not in move]
        self.shard.keys.setdefault(mode, []).extend(sorted(move))
        self._publish_requested()
        await self._send("change_mode", sorted(move), mode)

    def room(self, mode: Mode) -> int:
        """How many more keys of ``mode`` this connection can take within the limits."""
        counts = {m: len(self.shard.keys.get(m, [])) for m in MODES}
        others = [m for m in MODES if m != mode and counts[m] > 0]
        if not others:
            return max(self._limits.alone[mode] - counts[mode], 0)
        if not all(counts[m] <= self._limits.mixed[m] for m in others):
            return 0
        return max(self._limits.mixed[mode] - counts[mode], 0)

    def _all_keys(self) -> set[str]:
        return {k for keys in self.shard.keys.values() for k in keys}

    def _publish_requested(self) -> None:
        per_segment: dict[str, int] = {}
        for keys in self.shard.keys.values():
            for key in keys:
                segment = segment_of(key)
                per_segment[segment] = per_segment.get(segment, 0) + 1
        for segment in SEGMENTS:
            self._metrics.segment_keys.labels(self._label, segment).set(per_segment.get(segment, 0))
        for mode in MODES:
            self._metrics.sub_requested.labels(self._label, mode).set(len(self.shard.keys.get(mode, [])))

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
            try:
                ws = await self._connect()
            except ConnectError as exc:
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

    def _failure_delay(self, exc: ConnectError, delays: Iterator[float]) -> float:
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
        wait = self._limiter.wait_s()
        if wait > 0:
            await asyncio.sleep(wait)
        self._limiter.record()
        self._metrics.connect_attempts.labels(self._label).inc()
        try:
            token = self._tokens.read()
        except ConfigError as exc:
            raise TokenRejected(str(exc)) from None
        self._metrics.token_expiry.set(token_expiry(token) or 0)
        uri = await authorize(self._api_url, token, ssl_context=self._ssl)
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
            )
        except websockets.InvalidStatus as exc:
            raise classify_http_status(exc.response.status_code, "feed handshake") from None
        except ssl.SSLError as exc:
            raise FeedTLSError(f"feed TLS failure: {exc}") from None
        except websockets.InvalidHandshake as exc:
            raise FeedProtocolError(f"feed handshake failed: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise FeedNetworkError(f"feed connect failed: {exc}") from None

    async def _session(self, ws: ClientConnection) -> str:
        """Subscribe and read until the socket closes; return why it closed."""
        self._ws = ws
        label = self._label
        watchdog: asyncio.Task[None] | None = None
        connected_at = self._now()
        reason = "closed"
        try:
            for mode, keys in self.shard.keys.items():
                await self._send("sub", keys, mode)
            await self._mark_up(connected_at)
            watchdog = asyncio.create_task(self._watchdog(ws))
            async for message in ws:
                self._last_frame = time.monotonic()
                self._metrics.last_frame.labels(label).set(time.time())
                if isinstance(message, str):
                    # JSON text frames are server messages (e.g. subscription errors), never ticks.
                    self._metrics.text_messages.labels(label).inc()
                    logger.warning("connection %s: server message: %.300s", self.id, message)
                    continue
                self._metrics.bytes.labels(label).inc(len(message))
                try:
                    frame = decode_frame(message, self._now())
                except DecodeError as exc:
                    self._metrics.decode_errors.labels(label).inc()
                    logger.warning("connection %s: undecodable frame: %s", self.id, exc)
                    continue
                self._metrics.frames.labels(label, frame.kind).inc()
                await self._deliver(frame)
        except websockets.ConnectionClosed:
            pass
        except (OSError, TimeoutError) as exc:
            reason = f"network: {exc}"
        finally:
            self._ws = None
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            await ws.close()
            if ws.close_code is not None:
                reason = f"code {ws.close_code}" + (f" {ws.close_reason}" if ws.close_reason else "")
            await self._mark_down(connected_at, reason)
        return reason

    async def _mark_up(self, connected_at: datetime) -> None:
        self._last_frame = time.monotonic()
        self.sessions += 1
        self._metrics.connected.labels(self._label).set(1)
        for mode in MODES:
            n = len(self.shard.keys.get(mode, []))
            self._metrics.sub_active.labels(self._label, mode).set(n)
        logger.info("connection %s subscribed %d keys", self.id, self.shard.size)
        self.connected.set()
        down_since, self._down_since = self._down_since, None
        if down_since is not None and self.sessions > 1:
            segments = sorted(self.shard.segments())
            if self._market.any_open(segments):
                gap = Gap(self.id, down_since, connected_at, segments, "reconnect")
                await self._deliver(gap)

    async def _mark_down(self, connected_at: datetime, reason: str) -> None:
        self.connected.clear()
        self._metrics.connected.labels(self._label).set(0)
        for mode in MODES:
            self._metrics.sub_active.labels(self._label, mode).set(0)
        self._down_since = self._now()
        await self._deliver(FeedSession(self.id, connected_at, self._down_since, reason[:200]))

    async def _watchdog(self, ws: ClientConnection) -> None:
        """Ping a socket that is silent while its segments are open; close it if no pong."""
        opt = self._opt
        check_every = max(min(opt.stall_timeout_s / 4, 5.0), 0.01)
        while True:
            await asyncio.sleep(check_every)
            silent = time.monotonic() - self._last_frame
            if silent < opt.stall_timeout_s or not self._market.any_open(self.shard.segments()):
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
