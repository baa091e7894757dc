"""How far a journal's writer is behind its feed, read from the journal folder alone.

The feed appends, the writer commits; what lies between is the lag, and it
matters most exactly when one of them is in trouble: the database is away (the
writer never gets into a session), the writer is behind (it never catches up),
the writer process is restarting. So it is not published by either process on
its happy path: the supervisor reads it from the folder whenever Prometheus
scrapes, from two facts that are true at every moment:

- the journal's end: the position after the last byte of the newest segment;
- the committed position: the writer records it in the folder's ``committed``
  file right after each commit, and when it loads the position from the
  database (:func:`record_committed`). The database is the truth; the file
  only ever lags it by a commit whose news the writer did not live to write,
  which makes the lag read a batch too high, never too low. A folder without
  the file (a writer that never reached the database) counts everything on
  disk as uncommitted.

The age of the lag is the receive time of the first uncommitted record: its
header is read where the committed position points.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from collector.journal.files import segment_paths, segment_position
from collector.journal.format import HEADER, KINDS, MAGIC

__all__ = ["COMMITTED_FILE", "JournalProgress", "progress", "read_committed", "record_committed"]

COMMITTED_FILE = "committed"
_WIDTH = 20  # the position in fixed-width decimal: a concurrent reader sees all of it or an old value


@dataclass(frozen=True, slots=True)
class JournalProgress:
    """One journal's state on disk; positions are journal positions (bytes)."""

    end: int  # after the last byte written
    committed: int  # everything before it is in the database
    disk_bytes: int  # segments still on disk
    # Receive time (s since the epoch) of the first record not yet committed; None when there is none.
    oldest_uncommitted: float | None

    @property
    def lag_bytes(self) -> int:
        return max(self.end - self.committed, 0)


def record_committed(fd: int, position: int) -> None:
    """Write ``position`` to an open ``committed`` file (one pwrite; no fsync: the database is the truth)."""
    os.pwrite(fd, f"{position:0{_WIDTH}d}\n".encode(), 0)


def open_committed(directory: Path) -> int:
    """Open (creating) the ``committed`` file of a journal folder for :func:`record_committed`."""
    return os.open(directory / COMMITTED_FILE, os.O_WRONLY | os.O_CREAT, 0o644)


def read_committed(directory: Path) -> int | None:
    """The committed position recorded in the folder, or None when there is none yet."""
    try:
        text = (directory / COMMITTED_FILE).read_bytes()[: _WIDTH + 1]
    except (FileNotFoundError, NotADirectoryError):
        return None
    digits = text.strip()
    return int(digits) if len(digits) == _WIDTH and digits.isdigit() else None


def progress(directory: Path) -> JournalProgress:
    """Read a journal folder's end, committed position, size and the age of what is uncommitted."""
    found = []
    for path in segment_paths(directory):
        base = segment_position(path.name)
        with contextlib.suppress(FileNotFoundError):  # deleted by the writer meanwhile
            if base is not None:
                found.append((base, path, path.stat().st_size))
    if not found:
        committed = read_committed(directory) or 0
        return JournalProgress(committed, committed, 0, None)
    end = found[-1][0] + found[-1][2]
    recorded = read_committed(directory)
    # Nothing known to be committed: all that is on disk is not.
    committed = min(found[0][0] if recorded is None else recorded, end)
    disk = sum(size for _, _, size in found)
    oldest = None
    if committed < end:
        oldest = _receive_time(found, committed)
    return JournalProgress(end, committed, disk, oldest)


def _receive_time(found: list[tuple[int, Path, int]], position: int) -> float | None:
    """Receive time of the record at ``position``; the segment's time if no record header is there."""
    holder = None
    for base, path, size in found:
        if base <= position < base + size:
            holder = (base, path)
            break
    if holder is None:
        # The committed position is before every segment on disk (or in a hole): the oldest
        # segment's first record is the oldest thing not committed.
        holder = (found[0][0], found[0][1])
        position = found[0][0]
    base, path = holder
    try:
        with path.open("rb") as f:
            f.seek(position - base)
            head = f.read(HEADER.size)
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return None
    if len(head) == HEADER.size:
        magic, _, _, kind, time_ns = HEADER.unpack(head)
        if magic == MAGIC and kind in KINDS and 0 < time_ns <= time.time_ns() + 10**12:
            return float(time_ns) / 1e9
    # Not a record boundary (corruption the writer will skip): the segment's last write is
    # later than that record, so the age read from it errs on the young side, never invents one.
    return float(mtime)
