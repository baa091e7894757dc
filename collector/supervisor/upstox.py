"""Upstox's REST API, as the supervisor calls it: one token source, shared rate limiters, retries.

Every connection attempt needs a fresh ``GET /v3/feed/market-data-feed/authorize``:
the ``wss`` URL it returns carries a one-time ``code``, and reusing one is a
known cause of 403. The supervisor authorizes on behalf of every feed process
and fetches candles and holidays, all through one client (:class:`UpstoxRest`).
TLS is verified against the system trust store (``ssl.create_default_context``
honours ``SSL_CERT_FILE``); plain ``http://`` is used only when the configured
API URL says so.

Upstox limits REST calls per user and API (50/s, 500/min, 2000 per 30 min);
the collector keeps every call it makes, authorize included, under one limiter
(:func:`rest_limiter`), and a caller may add its own, stricter ones (the
backfill does, so that it never starves authorize).

Retries (:meth:`UpstoxRest.get_json`, never authorize: a feed retries on its
own schedule): a transient failure (:mod:`collector.exceptions`: a 429, a 5xx,
the network) waits for the backoff, a 429 at least for its ``Retry-After``
(at most ``max_retry_after_s``), and is retried ``retries`` times. Anything
else is final: 401/403 (the token), other 4xx
(:class:`~collector.exceptions.UpstoxProtocolError`: Upstox refused the
request; its message is kept, never the token), a TLS failure. Errors are
:class:`~collector.exceptions.UpstoxError` classes (their ``reason`` is the
metric label), named after the API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from collector.core.backoff import full_jitter
from collector.core.ratelimit import RateLimiter
from collector.exceptions import (
    ConfigError,
    TokenRejected,
    UpstoxError,
    UpstoxNetworkError,
    UpstoxProtocolError,
    UpstoxReason,
    UpstoxTLSError,
    classify_http_status,
)
from collector.metrics import RestApi

__all__ = [
    "AUTHORIZE_LIMITS",
    "AUTHORIZE_PATH",
    "HOLIDAYS_PATH",
    "REST_LIMITS",
    "Get",
    "TokenSource",
    "UpstoxRest",
    "acquire",
    "get",
    "rest_limiter",
    "token_expiry",
]

logger = logging.getLogger(__name__)

AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"
HOLIDAYS_PATH = "/v2/market/holidays"
# Upstox allows 50/s, 500/min and 2000 per 30 min per user and API; the whole
# collector (authorize and the candle backfill) stays below with one limiter.
REST_LIMITS = [(40, 1.0), (450, 60.0), (1800, 1800.0)]
# Authorize calls alone stay far lower, whatever the reconnect loops do.
AUTHORIZE_LIMITS = [(2, 1.0), (30, 60.0), (300, 1800.0)]


def rest_limiter(clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    """The one limiter for every REST call the collector makes."""
    return RateLimiter(REST_LIMITS, clock=clock)


async def acquire(*limiters: RateLimiter) -> None:
    """Wait until every limiter allows one more event, then record it in each.

    Checking and recording happen with no await in between, so concurrent
    callers in one event loop never overshoot a limit together.
    """
    while True:
        wait = max(limiter.wait_s() for limiter in limiters)
        if wait <= 0:
            for limiter in limiters:
                limiter.record()
            return
        await asyncio.sleep(wait)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix time) of a JWT access token, or None.

    Upstox tokens are JWTs; the claim is read without verifying the signature,
    only to export when the token stops working. The token itself is never
    logged or exported.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        exp = json.loads(base64.urlsafe_b64decode(padded)).get("exp")
    except (ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


class TokenSource:
    """Where the access token comes from; read again before every attempt.

    A token file can be rotated while the collector runs (e.g. a daily OAuth
    token written by another job); the environment variable cannot.
    """

    def __init__(self, *, token: str | None = None, token_file: Path | None = None) -> None:
        self._token = token
        self._file = token_file

    def read(self) -> str:
        if self._file is not None:
            try:
                token = self._file.read_text().strip()
            except OSError as exc:
                raise ConfigError("COLLECTOR_UPSTOX_TOKEN_FILE", f"cannot read: {exc.strerror}") from None
            if token:
                return token
            raise ConfigError("COLLECTOR_UPSTOX_TOKEN_FILE", "the file is empty")
        if self._token:
            return self._token
        raise ConfigError("COLLECTOR_UPSTOX_TOKEN", "no token configured")


# (url, token, ssl context, timeout, api name) -> body, raising UpstoxError: :func:`get`,
# or what a test puts in its place.
Get = Callable[[str, str, ssl.SSLContext | None, float, str], bytes]


def _message(body: bytes) -> str:
    """Upstox's own error text from an error body, if any (``errors[0]``)."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0] if errors else {}
        return " ".join(str(first.get(k, "")) for k in ("errorCode", "message")).strip()[:200]
    except (ValueError, AttributeError, TypeError, IndexError):
        return ""


def get(url: str, token: str, ssl_context: ssl.SSLContext | None, timeout_s: float, api: str) -> bytes:
    """GET an Upstox REST URL with the Bearer token (blocking); raises the UpstoxError for a failure.

    The one HTTP client of the collector: authorize, candles and holidays
    all come through here. ``api`` names the call in errors (never the token).
    """
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    # No redirects are expected; urllib would follow them without the header anyway.
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=ssl_context) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        with exc:  # the error holds the response and its socket
            error = classify_http_status(exc.code, api, exc.headers.get("Retry-After"))
            if type(error) is UpstoxProtocolError:  # a 4xx about the request itself: say what Upstox said
                text = _message(exc.read())
                error = UpstoxProtocolError(f"{api} answered {exc.code}" + (f": {text}" if text else ""))
        raise error from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            raise UpstoxTLSError(f"{api} TLS failure: {exc.reason}") from None
        raise UpstoxNetworkError(f"{api} failed: {exc.reason}") from None
    except ssl.SSLError as exc:
        raise UpstoxTLSError(f"{api} TLS failure: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise UpstoxNetworkError(f"{api} failed: {exc or type(exc).__name__}") from None


class UpstoxRest:
    """Upstox's REST API for the whole collector: authorize, candles, holidays.

    One token source and one REST limiter for every call the collector makes:
    the feed processes hold no secret and ask the supervisor (through their
    channel) for each one-time socket URL, which :meth:`authorize` gets.
    """

    def __init__(
        self,
        api_url: str,
        tokens: TokenSource,
        rest: RateLimiter,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff: Callable[[], Iterator[float]] = lambda: full_jitter(base_s=0.5, cap_s=8.0),
        max_retry_after_s: float = 60.0,
        on_call: Callable[[RestApi], None] = lambda api: None,
        on_failure: Callable[[RestApi, UpstoxReason], None] = lambda api, reason: None,
        on_token: Callable[[str], None] = lambda token: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        get: Get = get,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._tokens = tokens
        self.rest = rest
        self._authorize_limiter = RateLimiter(AUTHORIZE_LIMITS, clock=rest.clock)
        if self.api_url.startswith("https://") and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self.retries = retries
        self._backoff = backoff
        self._max_retry_after_s = max_retry_after_s
        self._on_call = on_call
        self._on_failure = on_failure
        self._on_token = on_token
        self._sleep = sleep
        self._get = get

    async def authorize(self) -> str:
        """The one-time ``wss`` URL for one connection attempt; raises UpstoxError, never retries.

        A feed connection retries on its own schedule (and counts its failures);
        authorize calls get a limiter of their own on top of the shared one.
        """
        token = self._token()
        self._on_token(token)
        await acquire(self._authorize_limiter, self.rest)
        self._on_call("authorize")
        try:
            return self._socket_url(
                await asyncio.to_thread(
                    self._get, self.api_url + AUTHORIZE_PATH, token, self._ssl, self._timeout_s, "authorize"
                )
            )
        except UpstoxError as exc:
            self._on_failure("authorize", exc.reason)  # counted like every other REST call's failures
            raise

    @staticmethod
    def _socket_url(body: bytes) -> str:
        try:
            uri = json.loads(body)["data"]["authorized_redirect_uri"]
        except (ValueError, KeyError, TypeError):
            # Cloudflare block pages arrive as HTML with status 200 or 403.
            raise UpstoxProtocolError("authorize returned no authorized_redirect_uri") from None
        if not isinstance(uri, str) or not uri.startswith(("wss://", "ws://")):
            raise UpstoxProtocolError("authorize returned a URL that is not ws:// or wss://")
        return uri

    async def holidays(self) -> Any:
        """The body of ``GET /v2/market/holidays`` (this year's list), after retries; raises UpstoxError."""
        return await self.get_json(HOLIDAYS_PATH, "holidays")

    async def get_json(
        self,
        path: str,
        api: RestApi,
        *,
        limiters: Sequence[RateLimiter] = (),
        allow: Callable[[], bool] = lambda: True,
    ) -> Any:
        """The JSON body of ``GET path``, after retries; raises UpstoxError.

        Each attempt waits for the shared limiter and ``limiters``; ``allow()``
        is asked before every retry (a run's request budget) and a False ends
        the retries with the last error.
        """
        delays = self._backoff()
        attempt = 0
        while True:
            try:
                return await self._once(path, api, limiters)
            except UpstoxError as exc:
                self._on_failure(api, exc.reason)
                if not exc.transient or attempt >= self.retries or not allow():
                    raise
                delay = next(delays)
                if exc.retry_after_s is not None:  # a 429's Retry-After
                    delay = max(delay, exc.retry_after_s)
                await self._sleep(min(delay, self._max_retry_after_s))
                attempt += 1

    async def _once(self, path: str, api: RestApi, limiters: Sequence[RateLimiter]) -> Any:
        token = self._token()
        await acquire(*limiters, self.rest)
        self._on_call(api)
        body = await asyncio.to_thread(self._get, self.api_url + path, token, self._ssl, self._timeout_s, api)
        try:
            return json.loads(body)
        except ValueError:
            # Cloudflare block pages arrive as HTML with status 200: retried like a 5xx,
            # so that UpstoxProtocolError always means "Upstox refused this request".
            raise UpstoxNetworkError(f"{api} answered something that is not JSON") from None

    def _token(self) -> str:
        try:
            return self._tokens.read()
        except ConfigError as exc:  # no token to send: the same as one refused
            raise TokenRejected(str(exc)) from None
