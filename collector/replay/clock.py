"""The replay clock: recorded time against the monotonic clock. No I/O: "now" is an argument.

At speed N a recorded instant ``t`` is due at ``began + (t - start) / N``
seconds of the monotonic clock: speed 1 is real time, 10 is ten times faster.
At ``max`` (speed None) every frame is due at once; the replay then sends as
fast as its clients read, and the clock stands at the last frame sent.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

__all__ = ["ReplayClock", "parse_speed"]


def parse_speed(text: str) -> float | None:
    """``max`` (None) or a finite speed above 0; raises ValueError."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise ValueError(f"--speed {text!r} is neither a number nor max") from None
    if not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"--speed {text!r}: a finite number above 0 (1 = real time), or max")
    return speed


class ReplayClock:
    """Where a replay of ``[start, end)`` stands."""

    def __init__(self, start: datetime, end: datetime, speed: float | None) -> None:
        self.start = start
        self.end = end
        self.speed = speed
        self.began: float | None = None  # monotonic time the clock started
        self.last_sent = start

    def begin(self, now: float) -> None:
        self.began = now

    def due(self, at: datetime) -> float | None:
        """Monotonic time at which a frame recorded at ``at`` leaves; None: now (max speed)."""
        if self.speed is None or self.began is None:
            return None
        return self.began + (at - self.start).total_seconds() / self.speed

    def sent(self, at: datetime) -> None:
        self.last_sent = max(self.last_sent, at)

    def position(self, now: float) -> datetime:
        """The recorded time replayed up to."""
        if self.speed is None or self.began is None:
            return self.last_sent
        running = self.start + timedelta(seconds=(now - self.began) * self.speed)
        return min(max(running, self.last_sent), self.end)
