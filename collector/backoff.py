"""Reconnect delays: capped exponential backoff with full jitter, and a rate limiter.

Full jitter (delay drawn uniformly from 0 to the capped exponential) spreads
reconnects of many connections apart (AWS architecture blog, "Exponential
Backoff And Jitter"). Both take their randomness and clock from the caller so
tests run in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["RateLimiter", "acquire", "full_jitter"]


def full_jitter(
    *, base_s: float = 1.0, cap_s: float = 60.0, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """Yield delays: uniform(0, min(cap_s, base_s * 2**n)) for n = 0, 1, 2, ..."""
    n = 0
    while True:
        yield rand() * min(cap_s, base_s * 2**n)
        n = min(n + 1, 62)


class RateLimiter:
    """Allow at most ``count`` events per ``window_s`` for each (count, window) pair.

    ``wait_s()`` says how long to wait before the next event is allowed;
    ``record()`` notes that one happened. Used to keep authorize calls far
    below Upstox's REST limits whatever the reconnect loop does.
    """

    def __init__(self, windows: list[tuple[int, float]], clock: Callable[[], float] = time.monotonic) -> None:
        self._windows = windows
        self.clock = clock
        self._events: deque[float] = deque()
        self._horizon = max(w for _, w in windows)

    def wait_s(self) -> float:
        now = self.clock()
        while self._events and self._events[0] <= now - self._horizon:
            self._events.popleft()
        wait = 0.0
        for count, window in self._windows:
            recent = [t for t in self._events if t > now - window]
            if len(recent) >= count:
                wait = max(wait, recent[-count] + window - now)
        return wait

    def record(self) -> None:
        self._events.append(self.clock())


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
