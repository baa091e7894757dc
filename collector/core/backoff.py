"""Reconnect delays: capped exponential backoff with full jitter. No I/O.

Full jitter (delay drawn uniformly from 0 to the capped exponential) spreads
reconnects of many connections apart (AWS architecture blog, "Exponential
Backoff And Jitter"). It takes its randomness from the caller so tests run in
milliseconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["full_jitter"]


def full_jitter(
    *, base_s: float = 1.0, cap_s: float = 60.0, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """Yield delays: uniform(0, min(cap_s, base_s * 2**n)) for n = 0, 1, 2, ..."""
    n = 0
    while True:
        yield rand() * min(cap_s, base_s * 2**n)
        n = min(n + 1, 62)
