"""GET JSON from Upstox's REST API for the supervisor: one token source, shared rate limiters, retries.

Upstox limits REST calls per user and API (50/s, 500/min, 2000 per 30 min);
the collector keeps every call it makes, authorize included, under one limiter
(:func:`collector.feed.auth.rest_limiter`), and a caller may add its own,
stricter ones (the backfill does, so that it never starves authorize).

Retries: a 429 waits for ``Retry-After`` (or the backoff, whichever is longer,
at most ``max_retry_after_s``), a 5xx or a network failure waits for the
backoff; both are retried ``retries`` times. Anything else is final: 401/403
(the token), other 4xx (:class:`~collector.exceptions.FeedProtocolError`:
Upstox refused the request; its message is kept, never the token), a TLS
failure. Errors are the feed's :class:`~collector.exceptions.ConnectError`
classes (their ``reason`` is the metric label), named after the API.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from collector.backoff import RateLimiter, acquire, full_jitter
from collector.exceptions import (
    ConfigError,
    ConnectError,
    FeedNetworkError,
    RateLimited,
    TokenRejected,
)
from collector.feed.auth import Get, TokenSource, get

__all__ = ["UpstoxRest"]


class UpstoxRest:
    """Upstox's REST API, as the supervisor calls it (candles, holidays)."""

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
        on_call: Callable[[str], None] = lambda api: None,
        on_failure: Callable[[str, str], None] = lambda api, reason: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        get: Get = get,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._tokens = tokens
        self.rest = rest
        if self.api_url.startswith("https://") and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self.retries = retries
        self._backoff = backoff
        self._max_retry_after_s = max_retry_after_s
        self._on_call = on_call
        self._on_failure = on_failure
        self._sleep = sleep
        self._get = get

    async def get_json(
        self,
        path: str,
        api: str,
        *,
        limiters: Sequence[RateLimiter] = (),
        allow: Callable[[], bool] = lambda: True,
    ) -> Any:
        """The JSON body of ``GET path``, after retries; raises ConnectError.

        Each attempt waits for the shared limiter and ``limiters``; ``allow()``
        is asked before every retry (a run's request budget) and a False ends
        the retries with the last error.
        """
        delays = self._backoff()
        attempt = 0
        while True:
            try:
                return await self._once(path, api, limiters)
            except (RateLimited, FeedNetworkError) as exc:
                self._on_failure(api, exc.reason)
                if attempt >= self.retries or not allow():
                    raise
                delay = next(delays)
                if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                await self._sleep(min(delay, self._max_retry_after_s))
                attempt += 1
            except ConnectError as exc:
                self._on_failure(api, exc.reason)
                raise

    async def _once(self, path: str, api: str, limiters: Sequence[RateLimiter]) -> Any:
        try:
            token = self._tokens.read()
        except ConfigError as exc:
            raise TokenRejected(str(exc)) from None
        await acquire(*limiters, self.rest)
        self._on_call(api)
        body = await asyncio.to_thread(self._get, self.api_url + path, token, self._ssl, self._timeout_s, api)
        try:
            return json.loads(body)
        except ValueError:
            # Cloudflare block pages arrive as HTML with status 200: retried like a 5xx,
            # so that FeedProtocolError always means "Upstox refused this request".
            raise FeedNetworkError(f"{api} answered something that is not JSON") from None
