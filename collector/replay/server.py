"""``collector replay``: a recorded span served over the Upstox V3 feed protocol.

The protocol is :class:`~collector.feedserver.server.FeedServer`'s (authorize
and its one-time URL, the direct path and its redirect, TLS, subscriptions
within the limits); what it carries is the recording
(:class:`~collector.replay.recording.Recording`), on one timeline shared by
every client, as the live market is:

- the clock starts once ``wait_clients`` sockets have subscribed and no
  request came for :data:`QUIET_S` (a collector subscribes in chunks); at
  ``max`` speed it also waits while no socket is subscribed, since sending
  into nobody would lose the span;
- a new socket gets ``market_info`` first: the recorded status of each segment
  at the clock, as the frames that set it (an empty ``market_info`` when
  nothing was recorded yet);
- a ``sub`` or ``change_mode`` gets an ``initial_feed`` snapshot of each key's
  last recorded state at the clock (none for a key with no state yet), then
  the recorded frames as they come: ``live_feed`` and ``initial_feed`` frames
  with their recorded ``currentTs``, ``market_info`` frames to every socket;
- a key asked for in a richer mode than recorded is served in the recorded one
  (:func:`collector.core.encode.served_kind`): its ``requestMode`` says which,
  the replay logs it and counts it (``collector_replay_mode_fallbacks_total``).
  No text frame: the official SDK parses every message as protobuf, and a
  single-mode client still gets every recorded key. Keys the recording does not
  hold are left out of a request (and logged), as the simulator does;
- gaps are silence, and the clock's position is logged every
  :data:`LOG_EVERY_S` and exported (``collector_replay_position_timestamp_seconds``).

At ``max`` the slowest client sets the pace: a frame goes to every socket
before the next is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Iterable
from datetime import datetime

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from collector.core.encode import RANK, join, market_info, tick_entry, to_ms
from collector.core.records import Mode, StatusChange
from collector.core.times import IST
from collector.feedserver.server import Client, FeedServer, Query
from collector.metrics import ReplayMetrics
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.replay.clock import ReplayClock
from collector.replay.recording import RecordedFrame, Recording
from collector.supervisor.upstox import HOLIDAYS_PATH

__all__ = ["LOG_EVERY_S", "QUIET_S", "ReplayServer"]

logger = logging.getLogger(__name__)

QUIET_S = 0.5
LOG_EVERY_S = 10.0
READ_AHEAD = 500  # recorded frames read ahead of the clock
_STATUS = {v.name: v.number for v in pb.MarketStatus.DESCRIPTOR.values}


def _ist(t: datetime) -> str:
    return t.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " IST"


def status_frame(rows: Iterable[StatusChange], current: datetime) -> bytes:
    """A ``market_info`` frame carrying recorded status rows, sent at ``current``."""
    segments: dict[str, int] = {}
    sessions: dict[str, dict[str, tuple[str, int]]] = {"pre_open": {}, "cas": {}}
    for row in rows:
        if row.session == "normal":
            number = _STATUS.get(row.status)
            segments[row.segment] = number if number is not None else int(row.status)
        elif row.session in sessions:
            sessions[row.session][row.segment] = (row.status, to_ms(row.time))
    return market_info(to_ms(current), segments, pre_open=sessions["pre_open"], cas=sessions["cas"])


class ReplayServer(FeedServer):
    """Serves one recording on one timeline."""

    def __init__(
        self,
        recording: Recording,
        *,
        speed: float | None,
        metrics: ReplayMetrics,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        wait_clients: int = 1,
        max_connections: int = 5,
        ping_interval_s: float | None = 20.0,
    ) -> None:
        super().__init__(
            host=host, port=port, token=token, ssl_context=ssl_context, max_connections=max_connections,
            ping_interval_s=ping_interval_s,
        )  # fmt: skip
        self.recording = recording
        self.clock = ReplayClock(recording.start, recording.end, speed)
        self.metrics = metrics
        self.wait_clients = wait_clients
        self.last = dict(recording.initial)  # each key's state at the clock
        self.market: dict[tuple[str, str], StatusChange] = {
            (s.segment, s.session): s for s in recording.initial_statuses
        }
        self.frames_sent = 0
        self.feeds_sent = 0
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self._last_request = 0.0
        self._requests = asyncio.Event()  # set by every subscription
        self._read_error: Exception | None = None
        self._timeline: asyncio.Task[None] | None = None
        self._gaps = list(recording.gaps)
        self._logged = 0.0
        m = metrics
        m.span_start.set(recording.start.timestamp())
        m.span_end.set(recording.end.timestamp())
        m.span_keys.set(len(recording.keys))
        m.span_ticks.set(recording.ticks)
        m.position.set(recording.start.timestamp())
        m.speed.set(math.inf if speed is None else speed)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._timeline = asyncio.create_task(self._run(), name="replay timeline")

    async def close(self) -> None:
        if self._timeline is not None:
            self._timeline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timeline
        await super().close()

    async def __aenter__(self) -> ReplayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait(self) -> None:
        """Until the span has been sent; raises what stopped the timeline, if anything did."""
        assert self._timeline is not None
        done = asyncio.create_task(self.finished.wait())
        await asyncio.wait({done, self._timeline}, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        if self._timeline.done() and not self.finished.is_set():
            self._timeline.result()

    # -- HTTP -------------------------------------------------------------------------

    async def route(self, request: Request, path: str, query: Query) -> Response | None:
        if path == HOLIDAYS_PATH:
            # The recorded holiday list, so a collector reading the replay has its calendar.
            return self.unauthorized(request) or self.json(
                200, {"status": "success", "data": self.recording.holidays}
            )
        return None

    # -- the protocol's hooks ---------------------------------------------------------

    def greeting(self, client: Client) -> list[bytes]:
        self.metrics.clients.set(len(self.clients))
        at = self.clock.position(time.monotonic())
        if not self.market:
            return [status_frame([], at)]  # nothing recorded yet: an empty market_info
        by_frame: dict[datetime, list[StatusChange]] = {}
        for row in self.market.values():
            by_frame.setdefault(row.received_at, []).append(row)
        frames = []
        for received_at in sorted(by_frame):
            rows = by_frame[received_at]
            normal = [r.time for r in rows if r.session == "normal"]
            frames.append(status_frame(rows, normal[0] if normal else received_at))
        self.metrics.frames.labels("market_info").inc(len(frames))
        return frames

    def gone(self, client: Client) -> None:
        self.metrics.clients.set(len(self.clients))

    def known(self, keys: list[str]) -> list[str]:
        offered = self.recording.keys
        known = [k for k in keys if k in offered]
        if len(known) < len(keys):
            left = [k for k in keys if k not in offered]
            logger.info("%d keys asked for are not in the recording, e.g. %s", len(left), left[0])
        return known

    def subscribed(self, client: Client, keys: list[str], mode: Mode) -> None:
        self._last_request = time.monotonic()
        self._requests.set()
        poorer = [k for k in keys if RANK[self.recording.keys[k][-1]] < RANK[mode]]
        if poorer:
            self.metrics.fallbacks.inc(len(poorer))
            kinds = sorted({self.recording.keys[k][-1] for k in poorer})
            logger.info(
                "connection %d: %d keys asked for in %s were recorded in %s only (e.g. %s): served as recorded",
                client.number, len(poorer), mode, "/".join(kinds), poorer[0],
            )  # fmt: skip

    def snapshot(self, client: Client, keys: list[str]) -> bytes | None:
        entries = [tick_entry(self.last[k], client.subs[k]) for k in keys if k in self.last]
        if not entries:
            return None
        self.feeds_sent += len(entries)
        self.metrics.feeds.inc(len(entries))
        self.metrics.frames.labels("initial_feed").inc()
        return join("initial_feed", to_ms(self.clock.position(time.monotonic())), entries)

    # -- the timeline -----------------------------------------------------------------

    def _subscribers(self) -> int:
        return sum(1 for c in self.clients if c.subs)

    async def _ready(self, clients: int) -> None:
        """Until ``clients`` sockets have subscribed and requests have stopped coming."""
        while True:
            self._requests.clear()
            if self._subscribers() >= clients and time.monotonic() - self._last_request >= QUIET_S:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._requests.wait(), QUIET_S / 5)

    async def _run(self) -> None:
        rec = self.recording
        logger.info(
            "replay of %s to %s: %d ticks of %d keys, %d gaps, %d sessions ended; waiting for %d client(s)",
            _ist(rec.start), _ist(rec.end), rec.ticks, len(rec.keys), len(rec.gaps), rec.sessions,
            self.wait_clients,
        )  # fmt: skip
        await self._ready(self.wait_clients)
        now = time.monotonic()
        self.clock.begin(now)
        self.started.set()
        self._logged = now
        speed = "max" if self.clock.speed is None else f"{self.clock.speed:g}x"
        logger.info("replay clock started at %s, speed %s", _ist(rec.start), speed)
        # Read ahead while the clock waits: a database fetch in the middle of a burst of
        # frames would make every frame behind it late.
        ahead: asyncio.Queue[RecordedFrame | None] = asyncio.Queue(maxsize=READ_AHEAD)
        reader = asyncio.create_task(self._read(ahead), name="replay reader")
        try:
            while (frame := await ahead.get()) is not None:
                await self._play(frame)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self._read_error is not None:
            raise self._read_error
        self.clock.sent(rec.end)
        self.metrics.position.set(rec.end.timestamp())
        self.metrics.finished.set(1)
        self.finished.set()
        carried = f"; {rec.carried_bars} exchange bars rode in a repeated state" if rec.carried_bars else ""
        unplaced = f"; {rec.unplaced_bars} exchange bars had no frame to ride in" if rec.unplaced_bars else ""
        logger.info(
            "replay reached the end of the span (%s): %d frames, %d feeds sent%s%s; serving on until stopped",
            _ist(rec.end), self.frames_sent, self.feeds_sent, carried, unplaced,
        )  # fmt: skip

    async def _read(self, ahead: asyncio.Queue[RecordedFrame | None]) -> None:
        try:
            async for frame in self.recording.frames():
                await ahead.put(frame)
                await asyncio.sleep(0)  # one frame's work at a time: the clock's sends come first
        except Exception as exc:  # the database went away: the timeline stops with it
            self._read_error = exc
        await ahead.put(None)

    async def _play(self, frame: RecordedFrame) -> None:
        """Send one frame when it is due."""
        if self.clock.speed is None and not self._subscribers():
            logger.info("replay paused at %s: no client is subscribed", _ist(self.clock.last_sent))
            await self._ready(1)
        due = self.clock.due(frame.at)
        if due is not None:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.metrics.lateness.observe(max(time.monotonic() - due, 0.0))
        self._announce_gaps(frame.at)
        await self._send(frame)
        self.clock.sent(frame.at)
        self._progress()

    def _announce_gaps(self, at: datetime) -> None:
        while self._gaps and self._gaps[0].started_at <= at:
            gap = self._gaps.pop(0)
            logger.info(
                "the recording has a gap on connection %d from %s to %s (%s): silence",
                gap.connection, _ist(gap.started_at), _ist(gap.ended_at), gap.reason,
            )  # fmt: skip

    def _progress(self) -> None:
        now = time.monotonic()
        position = self.clock.position(now)
        self.metrics.position.set(position.timestamp())
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            logger.info(
                "replay clock at %s: %d frames, %d feeds sent, %d client(s)",
                _ist(position), self.frames_sent, self.feeds_sent, len(self.clients),
            )  # fmt: skip

    async def _send(self, frame: RecordedFrame) -> None:
        m = self.metrics
        m.clients.set(len(self.clients))
        if frame.kind == "market_info":
            data = status_frame(frame.statuses, frame.feed_time)
            for row in frame.statuses:
                self.market[(row.segment, row.session)] = row
            for client in list(self.clients):
                with contextlib.suppress(ConnectionClosed):
                    await client.ws.send(data)
                    self.frames_sent += 1
                    m.frames.labels("market_info").inc()
            return
        for tick in frame.ticks:
            self.last[tick.instrument_key] = tick
        current = to_ms(frame.feed_time)
        cache: dict[tuple[int, Mode], bytes] = {}
        for client in list(self.clients):
            entries = []
            for i, tick in enumerate(frame.ticks):
                key = tick.instrument_key
                mode = client.subs.get(key)
                if mode is None:
                    continue
                entry = cache.get((i, mode))
                if entry is None:
                    entry = cache[(i, mode)] = tick_entry(tick, mode, frame.bars.get(key, ()))
                entries.append((key, entry))
            if not entries:
                continue
            sent = await self.send_feeds(client, entries, current, frame.kind)
            if sent > 0:
                self.frames_sent += sent
                self.feeds_sent += len(entries)
                m.frames.labels(frame.kind).inc(sent)
                m.feeds.inc(len(entries))
