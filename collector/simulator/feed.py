"""The simulator's feed socket: ``market_info`` first, snapshots after each request, then live frames.

After each ``sub``/``change_mode`` a client gets an ``initial_feed`` snapshot
of the keys it asked for (within Upstox's limits: ``limit_policy`` says what
happens past them), then ``live_feed`` frames batching many instruments, at
``rate`` ticks per second shared by all connections. Keys that no socket
carries any more keep trading at the same pace (:meth:`FeedSide._trade_unwatched`),
so the candles of a gap's minutes exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from collector.core.records import MODES, Mode
from collector.core.shards import Limits, segment_of
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.candles import RestApi, holiday_closed
from collector.simulator.market import SimMarket

__all__ = ["Client", "FeedSide", "LimitPolicy"]

LimitPolicy = Literal["error", "ignore", "close"]


@dataclass(eq=False)
class Client:
    """One feed socket and what it subscribed."""

    ws: ServerConnection
    number: int
    subs: dict[str, Mode] = field(default_factory=dict)
    stalled: bool = False
    owed: float = 0.0


class FeedSide:
    """The feed socket's half of :class:`~collector.simulator.server.Simulator`, which holds the state."""

    clients: list[Client]
    market: SimMarket
    api: RestApi
    segments: dict[str, int]
    rate: float
    frame_interval_s: float
    limits: Limits
    limit_policy: LimitPolicy
    request_delay_s: float
    connections_total: int
    snapshots_sent: int
    traded: set[str]
    replay_states: int
    _replay: dict[tuple[str, str], tuple[list[bytes], list[int]]]
    _background_owed: float

    def _market_info(self) -> bytes:
        msg = pb.FeedResponse(type=pb.market_info, currentTs=int(time.time() * 1000))
        for segment in self.segments:
            msg.marketInfo.segmentStatus[segment] = self._status(segment)  # type: ignore[assignment]
        return msg.SerializeToString()

    def _status(self, segment: str) -> int:
        """The segment's status: as set, but closed while its exchange has a holiday."""
        status = self.segments.get(segment, pb.NORMAL_CLOSE)
        holidays = self.api.holidays
        if holidays and holiday_closed(holidays, segment, time.time()):
            return pb.NORMAL_CLOSE
        return status

    def _open(self, key: str) -> bool:
        return self._status(segment_of(key)) in (pb.NORMAL_OPEN, pb.PRE_OPEN_START, pb.CLOSING_START)

    async def _trade_unwatched(self) -> None:
        """Trade the keys no socket carries now, at the pace a subscribed key trades.

        A subscribed key trades ``rate / keys subscribed`` times a second; a
        key subscribed once and unwatched now trades ``rate / keys ever
        subscribed`` times, so a drop changes nothing about the market.
        """
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.frame_interval_s)
            now = time.monotonic()
            elapsed, last = now - last, now
            if not self.traded:
                continue
            watched = {k for c in self.clients for k in c.subs}
            unwatched = [k for k in self.traded if k not in watched and self._open(k)]
            if not unwatched:
                self._background_owed = 0.0
                continue
            self._background_owed += self.rate * elapsed * len(unwatched) / len(self.traded)
            n = int(self._background_owed)
            self._background_owed -= n
            now_ms = int(time.time() * 1000)
            rng = self.market.rng
            while n > 0:
                chosen = rng.sample(unwatched, min(n, len(unwatched)))
                n -= len(chosen)
                for key in chosen:
                    self.market.tick(key, now_ms)

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections_total += 1
        client = Client(ws, self.connections_total)
        self.clients.append(client)
        streamer = asyncio.create_task(self._stream(client))
        try:
            await ws.send(self._market_info())
            async for message in ws:
                if self.request_delay_s:
                    await asyncio.sleep(self.request_delay_s)
                await self._request(client, message)
        except ConnectionClosed:
            pass
        finally:
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
            self.clients.remove(client)

    async def _request(self, client: Client, message: str | bytes) -> None:
        try:
            req = json.loads(message)
            method = req["method"]
            keys = list(req["data"]["instrumentKeys"])
            mode = req["data"].get("mode", "ltpc")
        except (ValueError, KeyError, TypeError):
            await client.ws.send(json.dumps({"status": "failed", "error": "bad request"}))
            return
        if method == "unsub":
            for key in keys:
                client.subs.pop(key, None)
            return
        if method not in ("sub", "change_mode") or mode not in MODES:
            await client.ws.send(json.dumps({"status": "failed", "error": f"bad method or mode {mode}"}))
            return
        known = [k for k in keys if k in self.market.instruments]
        if method == "change_mode":
            known = [k for k in known if k in client.subs]
        accepted = self._within_limits(client, known, mode)
        self.traded.update(accepted)
        if len(accepted) < len(known):
            if self.limit_policy == "close":
                await client.ws.close(1008, "subscription limit exceeded")
                return
            if self.limit_policy == "error":
                err = {"status": "failed", "method": method, "error": "subscription limit exceeded"}
                await client.ws.send(json.dumps(err))
        for key in accepted:
            client.subs[key] = mode
        await self._snapshot(client, accepted)

    def _within_limits(self, client: Client, keys: list[str], mode: Mode) -> list[str]:
        counts = dict.fromkeys(MODES, 0)
        for key, m in client.subs.items():
            if key not in keys:
                counts[m] += 1
        accepted = []
        for key in keys:
            counts[mode] += 1
            if not self.limits.fits(counts):
                counts[mode] -= 1
                continue
            accepted.append(key)
        return accepted

    async def _snapshot(self, client: Client, keys: list[str]) -> None:
        if not keys:
            return
        msg = pb.FeedResponse(currentTs=int(time.time() * 1000))  # initial_feed: type omitted
        for key in keys:
            self.market.fill(msg.feeds[key], self.market.instruments[key], client.subs[key])
        await client.ws.send(msg.SerializeToString())
        self.snapshots_sent += len(keys)

    async def _stream(self, client: Client) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.frame_interval_s)
            # Credit the time that really passed (sleeping plus generating),
            # so the configured rate holds however long a frame takes to build.
            now = time.monotonic()
            elapsed, last = now - last, now
            if client.stalled or not client.subs:
                continue
            total = sum(len(c.subs) for c in self.clients) or 1
            client.owed += self.rate * elapsed * len(client.subs) / total
            n = int(client.owed)
            if n <= 0:
                continue
            client.owed -= n
            keys = [k for k in client.subs if self._open(k)]
            if not keys:
                client.owed = 0.0
                continue
            await self._send_live(client, keys, n)

    def _replayed(self, key: str, mode: Mode, now_ms: int) -> bytes:
        """The next pre-serialized state of ``key`` in ``mode``: one ``feeds`` map entry."""
        ring = self._replay.get((key, mode))
        if ring is None:
            entries = []
            for i in range(self.replay_states):
                msg = pb.FeedResponse()  # no type, no currentTs: the bytes are the map entry alone
                self.market.fill(msg.feeds[key], self.market.tick(key, now_ms + i), mode)
                entries.append(msg.SerializeToString())
            ring = self._replay[(key, mode)] = (entries, [0])
        entries, cursor = ring
        cursor[0] = (cursor[0] + 1) % len(entries)
        return entries[cursor[0]]

    async def _send_live(self, client: Client, keys: list[str], n: int) -> None:
        rng = self.market.rng
        now_ms = int(time.time() * 1000)
        if self.replay_states:
            head = pb.FeedResponse(type=pb.live_feed).SerializeToString()
            tail = pb.FeedResponse(currentTs=now_ms).SerializeToString()
            while n > 0:
                chosen = rng.sample(keys, min(n, len(keys)))
                n -= len(chosen)
                frame = b"".join([head, *(self._replayed(k, client.subs[k], now_ms) for k in chosen), tail])
                try:
                    await client.ws.send(frame)
                except ConnectionClosed:
                    return
                for key in chosen:
                    self.market.instruments[key].sent += 1
            return
        while n > 0:
            # A map holds each key once, so more ticks than keys take several frames.
            chosen = rng.sample(keys, min(n, len(keys)))
            n -= len(chosen)
            msg = pb.FeedResponse(type=pb.live_feed, currentTs=now_ms)
            insts = []
            for key in chosen:
                inst = self.market.tick(key, now_ms)
                self.market.fill(msg.feeds[key], inst, client.subs[key])
                insts.append(inst)
            try:
                await client.ws.send(msg.SerializeToString())
            except ConnectionClosed:
                return
            for inst in insts:
                inst.sent += 1
