"""The simulator's server: a generated market over the V3 feed protocol, candles, holidays, a master.

One port serves everything, over TLS when given an SSL context. The feed
protocol (authorize with its one-time URL, the direct path with its redirect,
the socket and its subscriptions) is :class:`~collector.feedserver.server.FeedServer`'s;
the simulator adds:

- ``GET /v3/historical-candle/intraday/{key}/minutes/1`` and
  ``GET /v3/historical-candle/{key}/minutes/1/{to_date}/{from_date}`` the
  1-minute candles of what the market traded (:mod:`.candles`);
- ``GET /v2/market/holidays`` the holiday list it was given;
- ``GET /market-quote/instruments/exchange/complete.json.gz`` the master;
- ``GET /simulator/stats`` per-instrument counts for exact loss checks, and
  REST requests per API with the most seen in any 1 s / 60 s / 30 min window;
- ``GET /simulator/fault?kind=...`` fault injection for a separate process;
- the feed socket: ``market_info`` first, an ``initial_feed`` snapshot after
  each ``sub``/``change_mode``, then ``live_feed`` frames batching many
  instruments, at ``rate`` ticks per second shared by all connections.

The market keeps trading every key that was ever subscribed while no socket
carries it (after a drop, or while the collector is stopped), at the same
pace per key, so the candles of a gap's minutes exist; ``sent`` still counts
only ticks delivered over a socket. A segment is closed while its status says
so (:meth:`Simulator.set_market`) or its exchange has a holiday today (IST).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from collector.core.calendar import SEGMENTS
from collector.core.shards import DEFAULT_LIMITS, Limits
from collector.feedserver.server import FEED_PATH, LimitPolicy, Query
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.candles import CANDLE_PREFIX, HOLIDAYS_PATH, CandleFault, RestApi
from collector.simulator.feed import FeedSide
from collector.simulator.market import SimMarket, generate_master

__all__ = ["FEED_PATH", "MASTER_PATH", "Simulator"]

logger = logging.getLogger(__name__)

MASTER_PATH = "/market-quote/instruments/exchange/complete.json.gz"


class Simulator(FeedSide):
    """A protocol-faithful Upstox V3 stand-in on loopback: a generated market on the shared feed server."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "sim-token",
        ssl_context: ssl.SSLContext | None = None,
        rate: float = 1000.0,
        stocks: int = 50,
        frame_interval_s: float = 0.05,
        max_connections: int = 2,
        limits: Limits = DEFAULT_LIMITS,
        limit_policy: LimitPolicy = "error",
        seed: int = 1,
        ping_interval_s: float | None = 20.0,
        holidays: list[dict[str, Any]] | None = None,
        start_ms: int | None = None,
        candle_history_minutes: int = 1440,
        replay_states: int = 0,
    ) -> None:
        super().__init__(
            host=host, port=port, token=token, ssl_context=ssl_context, max_connections=max_connections,
            limits=limits, limit_policy=limit_policy, ping_interval_s=ping_interval_s,
        )  # fmt: skip
        self.rate = rate
        self.frame_interval_s = frame_interval_s
        master = generate_master(stocks)
        self.master = [{k: v for k, v in row.items() if not k.startswith("_")} for row in master]
        self.market = SimMarket(master, seed=seed, start_ms=start_ms, history_minutes=candle_history_minutes)
        self.segments: dict[str, int] = dict.fromkeys(SEGMENTS, pb.NORMAL_OPEN)
        # Candles and holidays (Upstox's list items: {"date", "closed_exchanges", ...}).
        self.api = RestApi(self.market, holidays or [])
        self.rest = self.api.log  # when each REST request arrived, per API
        self._auth_faults: list[tuple[int, float | None]] = []  # (status, Retry-After)
        self._hang_handshakes = 0
        self._black_hole: asyncio.Server | None = None
        self._swallowed: list[asyncio.StreamWriter] = []
        # replay_states > 0: a benchmark mode. Each (key, mode) gets that many
        # successive states, serialized once; live frames are then joined from
        # them in turn, so serving costs next to nothing and a collector can be
        # measured beyond what building protobuf messages in Python allows. Trade
        # times repeat once the ring wraps: use it for throughput, not for checks.
        self.replay_states = replay_states
        self._replay: dict[tuple[str, str], tuple[list[bytes], list[int]]] = {}
        self.traded: set[str] = set()  # every key ever subscribed: the market trades them
        self._background_owed = 0.0
        self._background: asyncio.Task[None] | None = None
        self._master_gz = gzip.compress(json.dumps(self.master).encode())

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        # Accepts connections and never says a word: a handshake that never completes.
        self._black_hole = await asyncio.start_server(
            lambda _reader, writer: self._swallowed.append(writer), self.host, 0
        )
        self._background = asyncio.create_task(self._trade_unwatched(), name="simulator market")
        logger.info("simulator listening on %s", self.url)

    async def close(self) -> None:
        self.resume()
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        await super().close()
        if self._black_hole is not None:
            self._black_hole.close()
            for writer in self._swallowed:
                writer.close()
            self._swallowed.clear()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults -----------------------------------------------------------------------

    def fail_authorize(self, status: int, count: int = 1, *, retry_after_s: float | None = None) -> None:
        """Answer the next ``count`` authorize calls with ``status`` (401, 403, 429, 500...).

        ``retry_after_s`` adds a ``Retry-After`` header, as Upstox does on 429.
        """
        self._auth_faults.extend([(status, retry_after_s)] * count)

    def hang_handshake(self, count: int = 1) -> None:
        """Hand out ``count`` socket URLs whose server takes the TCP connection and never answers."""
        self._hang_handshakes += count

    def fail_candles(
        self, status: int, count: int = 1, *, retry_after_s: float | None = None, key: str | None = None
    ) -> None:
        """Answer the next ``count`` candle requests (for ``key``, or any) with ``status``.

        429 carries ``Retry-After`` when ``retry_after_s`` is given; 0 means
        a success with no candles (``{"candles": []}``), as :meth:`empty_candles`.
        """
        self.api.candle_faults.extend([CandleFault(status, retry_after_s, key)] * count)

    def empty_candles(self, count: int = 1, *, key: str | None = None) -> None:
        """Answer the next ``count`` candle requests with success and no candles."""
        self.fail_candles(0, count, key=key)

    def fail_holidays(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` holiday list requests with ``status``."""
        self.api.holiday_faults.extend([status] * count)

    def clear_faults(self) -> None:
        """Forget every pending authorize, candle and holiday fault."""
        self._auth_faults.clear()
        self.api.candle_faults.clear()
        self.api.holiday_faults.clear()

    @property
    def holidays(self) -> list[dict[str, Any]]:
        return self.api.holidays

    def set_master(self, rows: list[dict[str, Any]]) -> None:
        """Serve ``rows`` as the instrument master from now on (the market keeps trading what it did)."""
        self.master = rows
        self._master_gz = gzip.compress(json.dumps(rows).encode())

    def set_holidays(self, holidays: list[dict[str, Any]]) -> None:
        """Replace the holiday list (Upstox's item shape); takes effect at once."""
        self.api.holidays = list(holidays)

    async def drop(self, code: int = 1006, reason: str = "") -> None:
        """Close every connection: 1006 aborts TCP with no close frame."""
        for client in list(self.clients):
            if code == 1006:
                client.ws.transport.abort()
            else:
                await client.ws.close(code, reason)

    def stall(self, *, pings: bool) -> None:
        """Stop sending data on current connections; without pings, stop answering too."""
        for client in self.clients:
            client.stalled = True
            if not pings:
                client.ws.transport.pause_reading()

    def resume(self) -> None:
        for client in self.clients:
            if client.stalled:
                client.stalled = False
                with contextlib.suppress(Exception):
                    client.ws.transport.resume_reading()

    async def send_garbage(self, size: int = 64) -> None:
        for client in list(self.clients):
            with contextlib.suppress(ConnectionClosed):
                await client.ws.send(os.urandom(size))

    async def send_text(self, text: str = '{"status":"failed","error":"simulated","method":"sub"}') -> None:
        for client in list(self.clients):
            with contextlib.suppress(ConnectionClosed):
                await client.ws.send(text)

    async def set_market(self, statuses: Mapping[str, str]) -> None:
        """Set segment statuses (MarketStatus names) and broadcast ``market_info``."""
        for segment, status in statuses.items():
            self.segments[segment] = pb.MarketStatus.Value(status)
        for client in list(self.clients):
            with contextlib.suppress(ConnectionClosed):
                await client.ws.send(self._market_info())

    def stats(self) -> dict[str, Any]:
        return {
            "instruments": {
                k: {"sent": i.sent, "ltt": i.ltt, "vtt": i.vtt}
                for k, i in self.market.instruments.items()
                if i.sent
            },
            "ticks_sent": sum(i.sent for i in self.market.instruments.values()),
            "connections": len(self.clients),
            "connections_total": self.connections_total,
            "authorize_calls": self.authorize_calls,
            "snapshots_sent": self.snapshots_sent,
            "subscriptions": [dict(c.subs) for c in self.clients],
            "rest_requests": self.rest.counts(),
            # Upstox's limits are per second, minute and 30 minutes.
            "rest_max_per_window": {str(int(w)): self.rest.max_in_window(w) for w in (1.0, 60.0, 1800.0)},
        }

    async def _fault(self, query: dict[str, list[str]]) -> str:
        kind = query.get("kind", [""])[0]
        arg = query.get("arg", [""])[0]
        if kind == "drop":
            await self.drop(int(arg or 1006))
        elif kind == "stall":
            self.stall(pings=arg != "nopings")
        elif kind == "resume":
            self.resume()
        elif kind == "garbage":
            await self.send_garbage()
        elif kind == "text":
            await self.send_text()
        elif kind == "market":
            # arg: SEGMENT=STATUS,SEGMENT=STATUS
            await self.set_market(dict(p.split("=", 1) for p in arg.split(",") if p))
        elif kind == "authorize":
            after = query.get("retry_after", [""])[0]
            self.fail_authorize(
                int(arg or 401),
                int(query.get("count", ["1"])[0]),
                retry_after_s=float(after) if after else None,
            )
        elif kind == "hang":
            self.hang_handshake(int(arg or 1))
        elif kind == "candles":
            # arg: a status (429, 500, ...) or "empty"; retry_after, count and key are optional.
            after = query.get("retry_after", [""])[0]
            self.fail_candles(
                0 if arg == "empty" else int(arg or 500), int(query.get("count", ["1"])[0]),
                retry_after_s=float(after) if after else None, key=query.get("key", [None])[0],
            )  # fmt: skip
        elif kind == "holidays":
            self.fail_holidays(int(arg or 500), int(query.get("count", ["1"])[0]))
        elif kind == "clear":
            self.clear_faults()
        elif kind == "slow":
            self.request_delay_s = float(arg or 1.0)
        elif kind == "rate":
            rate = float(arg)
            if not (math.isfinite(rate) and rate >= 0):  # nan would only fail later, in the send loop
                raise ValueError(f"rate {arg!r}: ticks per second, 0 or more")
            self.rate = rate
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return kind

    # -- HTTP -------------------------------------------------------------------------

    async def route(self, request: Request, path: str, query: Query) -> Response | None:
        if path.startswith(CANDLE_PREFIX):
            self.rest.record("candles")
            return self._candles(request, path)
        if path == HOLIDAYS_PATH or path.startswith(HOLIDAYS_PATH + "/"):
            self.rest.record("holidays")
            return self._holidays(request, path)
        if path == MASTER_PATH:
            return self.response(200, self._master_gz, "application/gzip")
        if path == "/simulator/stats":
            return self.json(200, self.stats())
        if path == "/simulator/fault":
            try:
                return self.json(200, {"done": await self._fault(query)})
            except (ValueError, KeyError) as exc:
                return self.json(400, {"error": str(exc)})
        return None

    def authorize(self, request: Request) -> Response:
        self.rest.record("authorize")
        if self._auth_faults and self.unauthorized(request) is None:
            self.authorize_calls += 1
            status, after = self._auth_faults.pop(0)
            response = self.json(status, {"status": "error"})
            if after is not None:
                response.headers["Retry-After"] = f"{after:g}"
            return response
        return super().authorize(request)

    def authorize_port(self) -> int:
        if self._hang_handshakes and self._black_hole is not None:
            self._hang_handshakes -= 1
            return int(self._black_hole.sockets[0].getsockname()[1])
        return self.port

    def _candles(self, request: Request, path: str) -> Response:
        return self.unauthorized(request) or self.json(*self.api.candles(path, time.time()))

    def _holidays(self, request: Request, path: str) -> Response:
        return self.unauthorized(request) or self.json(*self.api.holiday_list(path))
