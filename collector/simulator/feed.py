"""The simulator's feed: what its sockets carry, on :class:`~collector.feedserver.server.FeedServer`'s protocol.

A new socket gets ``market_info`` first; after each ``sub``/``change_mode`` an
``initial_feed`` snapshot of the keys it took (within Upstox's limits:
``limit_policy`` says what happens past them), then ``live_feed`` frames
batching many instruments, at ``rate`` ticks per second shared by all
connections. Keys that no socket carries any more keep trading at the same pace
(:meth:`FeedSide._trade_unwatched`), so the candles of a gap's minutes exist.
"""

from __future__ import annotations

import asyncio
import time

from collector.core.encode import market_info as market_info_frame
from collector.core.records import Mode
from collector.core.shards import segment_of
from collector.feedserver.server import Client, FeedServer
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.candles import RestApi, holiday_closed
from collector.simulator.market import SimMarket

__all__ = ["FeedSide"]


class FeedSide(FeedServer):
    """The feed half of :class:`~collector.simulator.server.Simulator`, which holds the state."""

    market: SimMarket
    api: RestApi
    segments: dict[str, int]
    rate: float
    frame_interval_s: float
    traded: set[str]
    replay_states: int
    _replay: dict[tuple[str, str], tuple[list[bytes], list[int]]]
    _background_owed: float

    def _market_info(self) -> bytes:
        return market_info_frame(int(time.time() * 1000), {s: self._status(s) for s in self.segments})

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

    def greeting(self, client: Client) -> list[bytes]:
        return [self._market_info()]

    def known(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k in self.market.instruments]

    def subscribed(self, client: Client, keys: list[str], mode: Mode) -> None:
        self.traded.update(keys)

    def snapshot(self, client: Client, keys: list[str]) -> bytes | None:
        msg = pb.FeedResponse(currentTs=int(time.time() * 1000))  # initial_feed: type omitted
        for key in keys:
            self.market.fill(msg.feeds[key], self.market.instruments[key], client.subs[key])
        return msg.SerializeToString()

    async def stream(self, client: Client) -> None:
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

    def _entry(self, key: str, mode: Mode, now_ms: int) -> bytes:
        """One ``feeds`` map entry: the key's next trade, or (``replay_states``) its next pre-built state."""
        if not self.replay_states:
            msg = pb.FeedResponse()
            self.market.fill(msg.feeds[key], self.market.tick(key, now_ms), mode)
            return msg.SerializeToString()
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
        while n > 0:
            # A map holds each key once, so more ticks than keys take several frames.
            chosen = rng.sample(keys, min(n, len(keys)))
            n -= len(chosen)
            entries = [(key, self._entry(key, client.subs[key], now_ms)) for key in chosen]
            if await self.send_feeds(client, entries, now_ms) < 0:
                return
            for key in chosen:
                self.market.instruments[key].sent += 1
