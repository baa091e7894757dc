"""Market status per segment, as the feed's ``market_info`` frames report it. No I/O.

Silence on the socket is normal while a segment is closed (Upstox has no
application heartbeat), so liveness checks ask this state whether data is
expected before treating silence as a problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from collector.core.records import StatusChange

__all__ = ["MARKET_STATUSES", "OPEN_STATUSES", "MarketState", "MarketStatus"]

# A segment's normal-session status (the feed's MarketStatus enum, by name).
MarketStatus = Literal[
    "PRE_OPEN_START", "PRE_OPEN_END", "NORMAL_OPEN", "NORMAL_CLOSE", "CLOSING_START", "CLOSING_END"
]  # fmt: skip
MARKET_STATUSES: tuple[MarketStatus, ...] = get_args(MarketStatus)
# Statuses during which updates are expected to flow.
OPEN_STATUSES: frozenset[MarketStatus] = frozenset({"PRE_OPEN_START", "NORMAL_OPEN", "CLOSING_START"})


class MarketState:
    """Latest normal-session status of each segment."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}

    def update(self, changes: Iterable[StatusChange]) -> list[StatusChange]:
        """Apply changes; return those that changed a segment's status."""
        changed = []
        for change in changes:
            if change.session != "normal":
                continue
            if self.status.get(change.segment) != change.status:
                self.status[change.segment] = change.status
                changed.append(change)
        return changed

    def is_open(self, segment: str) -> bool:
        return self.status.get(segment) in OPEN_STATUSES

    def any_open(self, segments: Iterable[str]) -> bool:
        """Whether data is expected for any of ``segments``.

        Before the first ``market_info`` frame nothing is known; we assume
        open so that a dead socket is never mistaken for a quiet market.
        """
        segs = list(segments)
        if not any(s in self.status for s in segs):
            return True
        return any(self.is_open(s) for s in segs)
