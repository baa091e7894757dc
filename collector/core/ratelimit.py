"""A sliding-window rate limiter: at most N events per window, for several windows at once. No I/O.

It takes its clock from the caller, so tests run in milliseconds; waiting is
the caller's business (:func:`collector.supervisor.upstox.acquire`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RateLimiter"]


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
