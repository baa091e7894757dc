"""Waiting for a condition, with a bound and a name for the failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Block until ``condition()`` is true, or fail after ``timeout_s``; returns the time it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - started


async def until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait until ``condition()`` is true, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
