"""What each component is handed: frozen options that :class:`~collector.settings.Settings` builds.

A field that is a setting has no default here: its one default is the
setting's (``Settings.feed_options()`` and friends fill it in), so a value can
never differ between the supervisor, a child's spec and the class. Fields
with a default are fixed tuning, not settings. This module imports nothing
heavy: every child process loads it to read its spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FeedOptions", "FsyncPolicy", "JournalOptions", "WriterOptions"]

FsyncPolicy = Literal["always", "periodic", "never"]


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """Timing and sizing of a feed connection; seconds unless named otherwise."""

    chunk_size: int  # keys per subscription request
    open_timeout_s: float
    ping_interval_s: float
    ping_timeout_s: float
    stall_timeout_s: float
    backoff_base_s: float
    backoff_cap_s: float
    token_retry_s: float
    rate_limit_retry_s: float
    journal_max_bytes: int  # stop reading at this much journal on disk
    healthy_after_s: float = 30.0  # a session this long resets the backoff
    max_frame_bytes: int = 16 * 1024 * 1024
    journal_retry_s: float = 1.0  # how often a full or unwritable journal is looked at again


@dataclass(frozen=True, slots=True)
class JournalOptions:
    """How a feed appends to its journal (:class:`~collector.journal.appender.JournalAppender`)."""

    fsync: FsyncPolicy
    fsync_interval_s: float
    segment_bytes: int


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """How a writer batches (:class:`~collector.writer.writer.Writer`); seconds unless named otherwise."""

    max_batch_rows: int
    flush_interval_s: float
    # While a write is in flight the next batch grows up to this many times max_batch_rows:
    # large enough that COPY's fixed costs vanish, small enough that the two batches a
    # writer holds (one in flight, one filling) stay within ~25 MiB of rows.
    grow_factor: int = 4
    # A caught-up writer sleeps until the feed rings the journal's doorbell
    # (collector.journal.doorbell); it looks again after idle_check_s anyway (a
    # safety net), or every poll_interval_s where the folder cannot hold the doorbell.
    idle_check_s: float = 1.0
    poll_interval_s: float = 0.01
    read_bytes: int = 512 * 1024  # journal bytes read at once
