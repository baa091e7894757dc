"""Ticks built by hand, for tests of what follows the decoder."""

from __future__ import annotations

from datetime import datetime

from collector.core.records import Tick


def tick(
    key: str,
    t: datetime,
    ltp: float,
    vtt: int | None,
    ltq: int = 1,
    snapshot: bool = False,
    kind: str = "full",
) -> Tick:
    """A tick of ``key`` traded at ``t`` (``kind`` its payload), with only price and volumes set."""
    nones = [None] * 19
    return Tick(t, key, kind, snapshot, t, t, ltp, ltq, 0.0, None, vtt, *nones)  # type: ignore[arg-type]
