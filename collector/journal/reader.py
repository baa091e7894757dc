"""Read a connection's journal from a committed position onwards, as it grows.

The writer seeks to the position the database says is committed and reads
records in order, never past what the feed has written. At the end of the
newest segment an incomplete record is waited for; at the end of an older
one it is torn (the feed died mid-write) and skipped. Corrupt stretches are
skipped up to the next record that checks out; each skip is reported with its
position (:attr:`JournalReader.skipped`). Segments wholly before the committed
position are deleted (:meth:`JournalReader.release`).
"""

from __future__ import annotations

import itertools
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from collector.journal.files import disk_bytes, segment_name, segment_paths, segments
from collector.journal.format import HEADER, MAX_RECORD_BYTES, Record, scan

__all__ = ["JournalReader", "last_record_time"]

logger = logging.getLogger(__name__)


class JournalReader:
    """Tails one journal folder."""

    def __init__(self, directory: Path, *, chunk_bytes: int = 4 * 1024 * 1024) -> None:
        self.directory = directory
        self.chunk_bytes = chunk_bytes
        self.position = 0  # the next byte to read
        self.skipped: list[tuple[int, int]] = []  # corrupt or torn stretches, taken by the caller
        self._segments: list[int] = []
        self._fd: int | None = None
        self._fd_base = -1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_base = -1

    # -- segments ---------------------------------------------------------------------

    def _path(self, base: int) -> Path:
        return self.directory / segment_name(base)

    def _list(self) -> list[int]:
        self._segments = [position for position, _ in segments(self.directory)]
        return self._segments

    def end(self) -> int:
        """The position after the last byte on disk (what the feed has written)."""
        segments = self._list()
        if not segments:
            return self.position
        last = segments[-1]
        try:
            return last + self._path(last).stat().st_size
        except FileNotFoundError:
            return self.position

    def disk_bytes(self) -> int:
        """Bytes of every segment still on disk."""
        return disk_bytes(self.directory)

    def usage(self) -> tuple[int, int, int]:
        """(end, bytes on disk, the position from which :meth:`release` can free a segment), from one listing.

        A writer asks after every commit: one folder listing and a stat per
        segment instead of one listing for each figure.
        """
        found = segments(self.directory)
        self._segments = [base for base, _ in found]
        total = end = 0
        for base, path in found:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            total += size
            end = base + size
        end = max(end, self.position)
        # The oldest segment can go once the commit reaches the next one; with one
        # segment, the next one starts at or after today's end.
        releasable = self._segments[1] if len(self._segments) > 1 else end
        return end, total, releasable

    def oldest(self) -> int:
        """The position of the oldest byte still on disk (0 for a journal with nothing in it yet).

        Only a question: unlike :meth:`seek` it never counts what lies before as lost.
        """
        listed = self._list()
        return listed[0] if listed else 0

    def seek(self, position: int) -> int:
        """Read from ``position`` on; returns where reading really starts.

        A position before the oldest segment (its data was deleted, e.g. the
        database was restored from an older backup) starts at the oldest one.
        """
        segments = self._list()
        if segments and position < segments[0]:
            logger.error(
                "journal %s: position %d is no longer on disk; resuming at %d",
                self.directory,
                position,
                segments[0],
            )
            self._skip(position, segments[0] - position)
            position = segments[0]
        self.position = position
        self.close()
        return position

    def _segment_of(self, position: int) -> int | None:
        base = None
        for b in self._segments:
            if b <= position:
                base = b
            else:
                break
        return base

    # -- reading ----------------------------------------------------------------------

    def read(self, max_bytes: int | None = None) -> list[Record]:
        """Records from the current position, up to about ``max_bytes``; [] when caught up."""
        want = max_bytes or self.chunk_bytes
        for _ in range(4):  # at most a few segment boundaries per call
            if not self._segments or self._segment_of(self.position) is None or self._fd is None:
                self._list()
            base = self._segment_of(self.position)
            if base is None:
                if self._segments and self._segments[0] > self.position:
                    self.seek(self.position)  # a hole before the first segment
                    continue
                return []
            records = self._read_segment(base, want, final=False)
            if records:
                return records
            # Nothing more here right now. If a newer segment exists this one is
            # finished (the feed never writes to an old segment again): take what
            # is left as final, then move on.
            newer = [b for b in self._list() if b > base]
            if not newer:
                return []
            records = self._read_segment(base, want, final=True)
            if records:
                return records
            size = self._size(base)
            seg_end = base + size
            if self.position < seg_end:
                continue  # more final data (e.g. a long corrupt stretch was just skipped)
            if newer[0] > seg_end:
                self._skip(seg_end, newer[0] - seg_end)
            self.position = newer[0]
            self.close()
        return []

    def _skip(self, position: int, size: int) -> None:
        # One corrupt stretch read in several chunks is one stretch.
        if self.skipped and sum(self.skipped[-1]) == position:
            self.skipped[-1] = (self.skipped[-1][0], self.skipped[-1][1] + size)
        else:
            self.skipped.append((position, size))

    def _size(self, base: int) -> int:
        try:
            return self._path(base).stat().st_size
        except FileNotFoundError:
            return 0

    def _read_segment(self, base: int, want: int, *, final: bool) -> list[Record]:
        if self._fd_base != base:
            self.close()
            try:
                self._fd = os.open(self._path(base), os.O_RDONLY)
            except FileNotFoundError:
                self._list()
                return []
            self._fd_base = base
        assert self._fd is not None
        while True:
            data = os.pread(self._fd, want, self.position - base)
            found = scan(data, self.position, final=final and len(data) < want)
            for stretch in found.skipped:
                self._skip(*stretch)
            self.position += found.consumed
            if found.records:
                return found.records
            if found.consumed:
                continue  # only corruption was skipped: look further
            if len(data) < want or len(data) < HEADER.size:
                return []
            # A record larger than the read: read enough for it.
            length = HEADER.unpack_from(data)[1]
            want = min(max(want * 2, HEADER.size + length), HEADER.size + MAX_RECORD_BYTES)

    # -- cleanup ----------------------------------------------------------------------

    def release(self, committed: int) -> int:
        """Delete segments that end at or before ``committed``; return bytes freed.

        The newest segment is never deleted: the feed may still append to it.
        """
        segments = self._list()
        freed = 0
        for base, following in itertools.pairwise(segments):
            if following > committed:
                break
            path = self._path(base)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:  # a disk that refuses: the segment stays until it takes it
                logger.warning(
                    "journal %s: cannot delete %s yet: %s", self.directory, path.name, exc.strerror
                )
                break
            if self._fd_base == base:
                self.close()
            freed += size
        if freed:
            self._list()
        return freed


def last_record_time(directory: Path, tail_bytes: int = 1024 * 1024) -> datetime | None:
    """Receive time of the last whole record in the journal: when its feed last read.

    The newest segment is never deleted, so after a crash or a stop this is
    the moment data stopped coming in (the start of a gap, if the market was
    open). Reads the last ``tail_bytes`` of the newest non-empty segment.
    """
    for path in reversed(segment_paths(directory)):
        size = path.stat().st_size
        if not size:
            continue
        start = max(size - tail_bytes, 0)
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        records = scan(data, start, final=True).records
        if not records and start:
            records = scan(path.read_bytes(), 0, final=True).records
        if records:
            return datetime.fromtimestamp(records[-1].time_ns / 1e9, UTC)
    return None
