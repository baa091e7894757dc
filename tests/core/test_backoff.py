from __future__ import annotations

import itertools

from collector.core.backoff import full_jitter
from collector.core.ratelimit import RateLimiter


def test_full_jitter_is_capped_exponential() -> None:
    highs = list(itertools.islice(full_jitter(base_s=1, cap_s=10, rand=lambda: 1.0), 6))
    assert highs == [1, 2, 4, 8, 10, 10]
    assert next(full_jitter(rand=lambda: 0.0)) == 0.0


def test_rate_limiter_windows() -> None:
    now = [0.0]
    rl = RateLimiter([(2, 1.0), (3, 60.0)], clock=lambda: now[0])
    for _ in range(2):
        assert rl.wait_s() == 0
        rl.record()
    assert rl.wait_s() == 1.0
    now[0] = 1.0
    rl.record()
    now[0] = 2.0
    assert rl.wait_s() == 58.0  # three in the last minute
