"""The Upstox V3 feed protocol, served on one port (TLS when given an SSL context).

- ``GET /v3/feed/market-data-feed/authorize`` checks the Bearer token and
  returns a one-time ``wss``/``ws`` URL (its ``code`` is good for one connect);
- ``GET /v3/feed/market-data-feed`` with the Bearer header, the direct path:
  a 302 redirect to a fresh one-time URL, as Upstox redirects to its feeder
  host (the official SDKs rely on it; the collector authorizes instead);
- the socket at that URL: ``market_info`` first, then the client's
  ``sub``/``unsub``/``change_mode`` requests (JSON, in binary or text frames)
  are honoured within the subscription limits, each ``sub`` and
  ``change_mode`` answered by an ``initial_feed`` snapshot of the keys it
  took; a bad request gets a JSON text frame, as third-party clients expect.

What the feed carries is the subclass's: the simulator generates a market
(:mod:`collector.simulator.server`), the replay serves a recording
(:mod:`collector.replay.server`). They fill in :meth:`FeedServer.greeting`,
:meth:`~FeedServer.known`, :meth:`~FeedServer.snapshot` and
:meth:`~FeedServer.stream`, add HTTP routes with :meth:`~FeedServer.route`, and
send frames through :meth:`~FeedServer.send_feeds`, which batches feed
entries into frames (:func:`collector.core.encode.batches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from collector.core.encode import batches, join
from collector.core.records import MODES, FrameKind, Mode
from collector.core.shards import DEFAULT_LIMITS, Limits
from collector.supervisor.upstox import AUTHORIZE_PATH

__all__ = ["DIRECT_PATH", "FEED_PATH", "Client", "FeedServer", "LimitPolicy"]

logger = logging.getLogger(__name__)

DIRECT_PATH = "/v3/feed/market-data-feed"
FEED_PATH = "/v3/feed/market-data-feed/ws"
# What happens to a request past the subscription limits (Upstox's own answer is unconfirmed).
LimitPolicy = Literal["error", "ignore", "close"]
Query = dict[str, list[str]]


@dataclass(eq=False)
class Client:
    """One connected socket and what it subscribed, by key."""

    ws: ServerConnection
    number: int
    subs: dict[str, Mode] = field(default_factory=dict)
    stalled: bool = False
    owed: float = 0.0  # the simulator's ticks due to it


class FeedServer:
    """Authorize, the direct path, the socket and its subscriptions; the feed comes from a subclass."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 2,
        limits: Limits = DEFAULT_LIMITS,
        limit_policy: LimitPolicy = "error",
        ping_interval_s: float | None = 20.0,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.limits = limits
        self.limit_policy = limit_policy
        self.ping_interval_s = ping_interval_s
        self.clients: list[Client] = []
        self.codes: set[str] = set()
        self.authorize_calls = 0
        self.redirects = 0
        self.connections_total = 0
        self.snapshots_sent = 0
        self.request_delay_s = 0.0
        self._server: Server | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; ``port`` 0 takes a free one (read ``port`` afterwards). Raises OSError."""
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            ssl=self.ssl_context,
            process_request=self._process_request,
            ping_interval=self.ping_interval_s,
            max_size=1 << 20,
            compression=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        """Base URL of the REST API (``COLLECTOR_UPSTOX_API_URL``)."""
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # -- what a subclass provides -----------------------------------------------------

    async def route(self, request: Request, path: str, query: Query) -> Response | None:
        """Answer an HTTP path of the subclass's own, or None (404)."""
        return None

    def greeting(self, client: Client) -> list[bytes]:
        """The frames a new socket gets first (``market_info``)."""
        return []

    def known(self, keys: list[str]) -> list[str]:
        """The keys of a request that this server can serve; the others are left out."""
        return keys

    def snapshot(self, client: Client, keys: list[str]) -> bytes | None:
        """The ``initial_feed`` frame for keys just (re)subscribed, or None."""
        return None

    def subscribed(self, client: Client, keys: list[str], mode: Mode) -> None:
        """Called with the keys a ``sub``/``change_mode`` took, before the snapshot."""

    async def stream(self, client: Client) -> None:
        """Send a client its live frames until it goes (cancelled then)."""

    def gone(self, client: Client) -> None:
        """Called once a client's socket is closed and it is no longer in ``clients``."""

    def authorize_port(self) -> int:
        """The port the one-time URLs point at."""
        return self.port

    # -- HTTP -------------------------------------------------------------------------

    @staticmethod
    def response(
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: Mapping[str, str] | None = None,
    ) -> Response:
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
        for name, value in (extra or {}).items():
            headers[name] = value
        return Response(status, HTTPStatus(status).phrase, headers, body)

    def json(self, status: int, payload: object, extra: Mapping[str, str] | None = None) -> Response:
        return self.response(status, json.dumps(payload).encode(), extra=extra)

    def unauthorized(self, request: Request) -> Response | None:
        """A 401 as Upstox words it, unless the request carries the Bearer token."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.json(401, {"status": "error", "errors": [{"errorCode": "UDAPI100050"}]})
        return None

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        if parts.path == AUTHORIZE_PATH:
            return self.authorize(request)
        if parts.path == DIRECT_PATH:
            return self._redirect(request)
        if parts.path == FEED_PATH:
            code = query.get("code", [""])[0]
            if code not in self.codes:
                return self.json(403, {"status": "error", "errors": [{"message": "invalid code"}]})
            self.codes.discard(code)  # one-time
            if len(self.clients) >= self.max_connections:
                return self.json(403, {"status": "error", "errors": [{"message": "connection limit"}]})
            return None  # proceed with the WebSocket handshake
        return await self.route(request, parts.path, query) or self.json(404, {"status": "error"})

    def one_time_url(self) -> str:
        """A socket URL whose code is good for one connect."""
        code = str(uuid.uuid4())
        scheme = "wss" if self.ssl_context else "ws"
        self.codes.add(code)
        return (
            f"{scheme}://{self.host}:{self.authorize_port()}{FEED_PATH}?requestId={uuid.uuid4()}&code={code}"
        )

    def authorize(self, request: Request) -> Response:
        """``authorize``: the one-time URL in Upstox's response shape."""
        self.authorize_calls += 1
        refused = self.unauthorized(request)
        if refused is not None:
            return refused
        uri = self.one_time_url()
        return self.json(
            200, {"status": "success", "data": {"authorized_redirect_uri": uri, "authorizedRedirectUri": uri}}
        )

    def _redirect(self, request: Request) -> Response:
        refused = self.unauthorized(request)
        if refused is not None:
            return refused
        self.redirects += 1
        return self.response(302, b"", "text/plain", {"Location": self.one_time_url()})

    # -- the socket -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections_total += 1
        client = Client(ws, self.connections_total)
        self.clients.append(client)
        streamer = asyncio.create_task(self.stream(client))
        try:
            for frame in self.greeting(client):
                await ws.send(frame)
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
            self.gone(client)

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
        known = self.known(keys)
        if method == "change_mode":
            known = [k for k in known if k in client.subs]
        accepted = self._within_limits(client, known, mode)
        self.subscribed(client, accepted, mode)
        if len(accepted) < len(known):
            if self.limit_policy == "close":
                await client.ws.close(1008, "subscription limit exceeded")
                return
            if self.limit_policy == "error":
                err = {"status": "failed", "method": method, "error": "subscription limit exceeded"}
                await client.ws.send(json.dumps(err))
        for key in accepted:
            client.subs[key] = mode
        if accepted:
            frame = self.snapshot(client, accepted)
            if frame is not None:
                await client.ws.send(frame)
                self.snapshots_sent += len(accepted)

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

    async def send_feeds(
        self,
        client: Client,
        entries: Iterable[tuple[str, bytes]],
        current_ts_ms: int,
        kind: FrameKind = "live_feed",
    ) -> int:
        """Send (key, feed entry) pairs as frames of ``kind``; returns the frames sent,
        -1 once the socket is gone."""
        sent = 0
        for frame in batches(entries):
            try:
                await client.ws.send(join(kind, current_ts_ms, frame))
            except ConnectionClosed:
                return -1
            sent += 1
        return sent
