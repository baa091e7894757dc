"""Accumulate records into batches, sealed by size or age. No I/O.

The writer adds every decoded frame here, and asks two questions with the
time in hand. :meth:`Batcher.due`: when no write is in flight, is the open
batch to be sealed and written now? Yes once it holds ``max_batch_rows``
ticks or its first record is ``flush_interval_s`` old, whichever comes
first. :meth:`Batcher.full`: while a write is in flight the open batch keeps
growing, so a slow or busy database gets larger, fewer batches; has it grown
to ``grow_factor`` times the size bound, so that reading must wait for the
write (the journal holds the rest meanwhile)?

Exchange bars repeat in nearly every full-mode frame (the previous and the
current I1/I30 bar); within a batch only the latest version of each
(instrument, interval, bar start) is kept, since the table upserts anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.core.records import BarRow, FeedSession, Gap, StatusChange

__all__ = ["Batch", "Batcher"]


@dataclass(slots=True)
class Batch:
    """A unit written in one transaction: the rows read from ``journal`` between
    positions ``start`` and ``end``, and the sequencer ``state`` at ``end``."""

    ticks: list[bytes] = field(default_factory=list)  # rows of ``ticks`` (binary COPY, collector.pgcopy)
    oldest_tick_us: int | None = None  # the earliest tick time, us since the Unix epoch
    bars: list[bytes] = field(default_factory=list)  # rows of ``exchange_bars`` (binary COPY)
    statuses: list[StatusChange] = field(default_factory=list)
    sessions: list[FeedSession] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    # (table, reason, row as JSON): input that can never be stored as rows,
    # e.g. an undecodable frame, kept in dead_letters instead of dropped.
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    opened_at: float = 0.0  # caller's monotonic clock
    journal: str = ""
    start: int = 0
    end: int = 0
    state: bytes = b""
    first_received_ns: int = 0  # receive time of the first record in it


class Batcher:
    """Collects ticks, bars and status changes; the caller supplies the time."""

    def __init__(self, *, max_batch_rows: int, flush_interval_s: float, grow_factor: int) -> None:
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be at least 1")
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be positive")
        if grow_factor < 1:
            raise ValueError("grow_factor must be at least 1")
        self.max_batch_rows = max_batch_rows
        self.flush_interval_s = flush_interval_s
        self.grow_factor = grow_factor
        self._ticks: list[bytes] = []
        self._oldest_tick_us: int | None = None
        self._bars: dict[tuple[str, str, int], bytes] = {}
        self._statuses: list[StatusChange] = []
        self._sessions: list[FeedSession] = []
        self._gaps: list[Gap] = []
        self._rejects: list[tuple[str, str, str]] = []
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return (
            len(self._ticks) + len(self._bars) + len(self._statuses)
            + len(self._sessions) + len(self._gaps) + len(self._rejects)
        )  # fmt: skip

    def add(
        self,
        now: float,
        ticks: Sequence[bytes] = (),
        bars: Sequence[BarRow] = (),
        statuses: Sequence[StatusChange] = (),
        sessions: Sequence[FeedSession] = (),
        gaps: Sequence[Gap] = (),
        rejects: Sequence[tuple[str, str, str]] = (),
        oldest_tick_us: int | None = None,
    ) -> None:
        """Add records received at monotonic time ``now``; ``oldest_tick_us`` is the earliest of ``ticks``."""
        if not (ticks or bars or statuses or sessions or gaps or rejects):
            return
        if self._opened_at is None:
            self._opened_at = now
        self._ticks.extend(ticks)
        if oldest_tick_us is not None and (
            self._oldest_tick_us is None or oldest_tick_us < self._oldest_tick_us
        ):
            self._oldest_tick_us = oldest_tick_us
        self._bars.update(bars)  # (bar, row) pairs: a later version replaces an earlier one
        self._statuses.extend(statuses)
        self._sessions.extend(sessions)
        self._gaps.extend(gaps)
        self._rejects.extend(rejects)

    def age(self, now: float) -> float:
        """Seconds since the open batch got its first record (0 when empty)."""
        return 0.0 if self._opened_at is None else now - self._opened_at

    def due(self, now: float) -> bool:
        """Whether to seal the open batch at monotonic time ``now``, no write being in flight.

        It is when it holds ``max_batch_rows`` ticks or its first record is
        ``flush_interval_s`` old; an empty one is due at once, for the caller
        has only journal positions to commit (events nobody stores, skipped
        corruption) when it asks.
        """
        if len(self._ticks) >= self.max_batch_rows or len(self) == 0:
            return True
        return self.age(now) >= self.flush_interval_s

    def full(self) -> bool:
        """Whether the open batch, growing while a write is in flight, is to wait for that write."""
        return len(self._ticks) >= self.max_batch_rows * self.grow_factor

    def seal(self) -> Batch | None:
        """Close the open batch and return it (None when empty)."""
        if self._opened_at is None:
            return None
        batch = Batch(
            ticks=self._ticks,
            oldest_tick_us=self._oldest_tick_us,
            bars=list(self._bars.values()),
            statuses=self._statuses,
            sessions=self._sessions,
            gaps=self._gaps,
            rejects=self._rejects,
            opened_at=self._opened_at,
        )
        self._ticks = []
        self._oldest_tick_us = None
        self._bars = {}
        self._statuses = []
        self._sessions = []
        self._gaps = []
        self._rejects = []
        self._opened_at = None
        return batch
