"""A journal's folder: its lock files, its identity, and its segment files.

A journal is a folder of segment files named after the position of their
first byte (``00000000000000000000.journal``), an ``id`` file, and the lock
files of the processes that use it (``feed.lock``: the one process that
appends; ``writer.lock``: the one that reads and commits).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from pathlib import Path
from typing import Final

from collector.exceptions import JournalLockedError

__all__ = [
    "SEGMENT_SUFFIX",
    "disk_bytes",
    "journal_id",
    "lock_file",
    "segment_name",
    "segment_paths",
    "segment_position",
    "segments",
]

SEGMENT_SUFFIX: Final = ".journal"


def segment_name(position: int) -> str:
    """File name of the segment whose first byte is at ``position``."""
    return f"{position:020d}{SEGMENT_SUFFIX}"


def segment_position(name: str) -> int | None:
    """The position a segment file name stands for, or None if it is not one."""
    stem, dot, suffix = name.partition(".")
    if "." + suffix != SEGMENT_SUFFIX or not dot or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def lock_file(path: Path, what: str) -> int:
    """Take an exclusive flock on ``path`` for this process's life; return the fd.

    Raises :class:`JournalLockedError` naming the holder when another process
    has it: two processes appending to one journal would corrupt it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise JournalLockedError(f"{what} {path.parent} is in use by pid {holder}") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def journal_id(directory: Path) -> str:
    """The journal's identity (a UUID kept in ``directory/id``), created on first use.

    Positions are committed under this id, so a journal folder that is deleted
    and made again never resumes from a position of its predecessor.
    """
    path = directory / "id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"id.{os.getpid()}.tmp"
    tmp.write_text(str(uuid.uuid4()) + "\n")
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)  # atomic: the first one wins
    tmp.unlink()
    return path.read_text().strip()


def segments(directory: Path) -> list[tuple[int, Path]]:
    """(position, path) of every segment of a journal folder, oldest first; [] while it does not exist."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            position = segment_position(entry.name)
            if position is not None:
                found.append((position, Path(entry.path)))
    return sorted(found)


def segment_paths(directory: Path) -> list[Path]:
    """Segment files of a journal folder, oldest first."""
    return [path for _, path in segments(directory)]


def disk_bytes(directory: Path) -> int:
    """Bytes of every segment of a journal folder on disk (one deleted meanwhile counts nothing)."""
    total = 0
    for _, path in segments(directory):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total
