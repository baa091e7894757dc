"""Append what a connection reads to its journal, one record per frame.

The feed's only job between two socket reads: one ``writev`` of header and
frame into the current segment. The bytes are then in the OS page cache,
which keeps them across a SIGKILL of the process; ``fsync`` decides what a
power loss takes (``COLLECTOR_JOURNAL_FSYNC``):

- ``always``: fsync after every record. Survives power loss; slowest.
- ``periodic`` (default): fsync every ``fsync_interval_s`` in a thread, off the
  reading path. A power loss takes at most that long; a process kill nothing.
- ``never``: leave it to the OS. A process kill loses nothing; a power loss
  what the kernel had not written back (up to ~30 s on Linux defaults).

One process writes a journal (``feed.lock``, an flock held while open); a new
writer never appends to an existing segment (its end may be torn), it starts
a new one at the position after the old file's last byte. The writer deletes
segments once everything in them is committed; :meth:`disk_bytes` is what is
left on disk, which the feed compares with ``COLLECTOR_JOURNAL_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from pathlib import Path

from collector.exceptions import JournalWriteError
from collector.journal.doorbell import Doorbell
from collector.journal.files import disk_bytes, journal_id, lock_file, segment_name, segments
from collector.journal.format import encode_header
from collector.options import JournalOptions

__all__ = ["JournalAppender"]

logger = logging.getLogger(__name__)


class JournalAppender:
    """Appends records to one journal folder."""

    def __init__(self, directory: Path, options: JournalOptions) -> None:
        self.directory = directory
        self.fsync = options.fsync
        self.fsync_interval_s = options.fsync_interval_s
        self.segment_bytes = options.segment_bytes
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment_size = 0
        self._dirty = False
        self._last_ns = 0
        self.position = 0  # where the next record goes
        self.id = ""
        self._disk_bytes = 0
        self._disk_checked = 0.0
        self._bell = Doorbell(directory)

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Lock the journal and get ready to append after whatever is there."""
        self._lock_fd = lock_file(self.directory / "feed.lock", "journal")
        self.id = journal_id(self.directory)
        self._bell.open()
        found = segments(self.directory)
        if found:
            last = found[-1]
            self.position = last[0] + last[1].stat().st_size
        # The first segment of this writer is made at the first append: a
        # process that dies before writing leaves the journal as it found it.

    def close(self) -> None:
        """Flush to disk (unless fsync is never) and release the journal."""
        if self._fd is not None:
            if self.fsync != "never":
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        self._bell.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> JournalAppender:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_segment(self) -> None:
        if self._fd is not None:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        path = self.directory / segment_name(self.position)
        try:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                if path.stat().st_size:
                    raise
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # ours, and still empty
            if self.fsync != "never":
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            self._fd = None
            raise JournalWriteError(
                f"journal {self.directory}: cannot start a segment: {exc.strerror}"
            ) from exc
        self._segment_size = 0
        logger.debug("journal %s: segment %s", self.directory, path.name)

    # -- appending --------------------------------------------------------------------

    def append(self, kind: int, payload: bytes, time_ns: int | None = None) -> int:
        """Append one record; return the receive time written (ns, never decreasing).

        Raises :class:`JournalWriteError` when the disk refuses (full, read-only);
        nothing partial is left behind where it can be helped.
        """
        now = time.time_ns() if time_ns is None else time_ns
        if now <= self._last_ns:
            now = self._last_ns + 1  # receive times follow journal order, whatever the clock does
        if self._fd is None or self._segment_size >= self.segment_bytes:
            self._open_segment()
        fd = self._fd
        assert fd is not None
        header = encode_header(kind, now, payload)
        size = len(header) + len(payload)
        try:
            written = os.writev(fd, (header, payload))
            if written != size:
                raise OSError(errno.ENOSPC, f"short write ({written} of {size} bytes)")
            if self.fsync == "always":
                os.fsync(fd)
        except OSError as exc:
            self._undo(fd)
            raise JournalWriteError(f"journal {self.directory}: cannot append: {exc.strerror}") from exc
        self._segment_size += size
        self.position += size
        self._disk_bytes += size
        self._dirty = True
        self._last_ns = now
        self._bell.ring()  # the writer wakes (collector.doorbell)
        return now

    def _undo(self, fd: int) -> None:
        """After a failed write, cut the segment back to its last whole record."""
        try:
            os.ftruncate(fd, self._segment_size)
        except OSError:
            # Cannot repair in place: the reader skips the torn bytes, and the
            # next append goes to a new segment after them.
            with contextlib.suppress(OSError):
                self.position += os.fstat(fd).st_size - self._segment_size
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fd = None

    # -- durability and size ----------------------------------------------------------

    async def sync_forever(self) -> None:
        """The periodic fsync policy: flush in a thread, never on the reading path."""
        if self.fsync != "periodic":
            return
        while True:
            await asyncio.sleep(self.fsync_interval_s)
            fd = self._fd
            if fd is not None and self._dirty:
                self._dirty = False
                try:
                    await asyncio.to_thread(os.fsync, fd)
                except OSError as exc:  # closed meanwhile, or the disk failed: the next append reports it
                    logger.debug("journal fsync: %s", exc)

    def disk_bytes(self, max_age_s: float = 0.5) -> int:
        """Bytes of every segment on disk (re-read at most every ``max_age_s``)."""
        now = time.monotonic()
        if now - self._disk_checked >= max_age_s:
            self._disk_bytes = disk_bytes(self.directory)
            self._disk_checked = now
        return self._disk_bytes

    def writable(self, min_free_bytes: int = 1024 * 1024) -> bool:
        """Whether appending can resume after a disk error: writable, with room left."""
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return False
        return os.access(self.directory, os.W_OK) and st.f_bavail * st.f_frsize >= min_free_bytes
