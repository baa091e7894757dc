"""The journal's doorbell: the feed rings it after each append, the writer wakes on it.

A FIFO named ``doorbell`` in the journal folder. The feed writes one byte
after each record it appends; the writer's event loop watches the FIFO
(``add_reader``) and, once woken, empties it and reads the journal to its end.
So an idle writer sleeps until there is something to read, instead of looking
at the folder a hundred times a second (what it did: the largest part of an
idle collector's CPU).

Why a FIFO, not inotify: it needs no ctypes and no Linux-only API, it says
"a whole record is there" (inotify would wake the writer on every write,
torn ones included, and on the feed's fsyncs), and a ring costs the feed one
non-blocking ``write`` of one byte (~1 us; measured beside a frame's
append). Both sides open it read-write and non-blocking, so neither waits for
the other to be there, no end ever sees end-of-file, and a ring while the pipe
is full (64 KiB of rings nobody read yet) is dropped: the writer is behind
and will read everything anyway.

Rings are hints, never data: the writer reads the journal first and waits on
the doorbell only when it has caught up, after emptying the FIFO, so a ring
can never be lost between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

__all__ = ["DOORBELL", "Doorbell"]

logger = logging.getLogger(__name__)

DOORBELL = "doorbell"


class Doorbell:
    """One end of a journal's doorbell; ``None``-safe when the folder cannot hold a FIFO."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / DOORBELL
        self._fd: int | None = None

    def open(self) -> bool:
        """Make (if needed) and open the FIFO; False if this file system cannot have one."""
        try:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                raise OSError(errno.EEXIST, "exists and is not a FIFO")
            # Read-write: opening never blocks and neither end ever sees end-of-file.
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            logger.warning("journal doorbell %s unavailable (%s): the writer will poll", self.path, exc)
            self._fd = None
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def available(self) -> bool:
        return self._fd is not None

    # -- the feed's end -----------------------------------------------------------------

    def ring(self) -> None:
        """Say "there is more in the journal"; never blocks, never fails."""
        if self._fd is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.write(self._fd, b"\0")  # a full pipe: rings enough are waiting

    # -- the writer's end ---------------------------------------------------------------

    def clear(self) -> None:
        """Forget the rings so far: call before reading the journal to its end."""
        if self._fd is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while len(os.read(self._fd, 65536)) == 65536:
                pass

    async def wait(self) -> None:
        """Return when the doorbell rings, at once if it rang since the last :meth:`clear`.

        The FIFO is watched only while someone waits: a writer busy with a
        batch is not woken by every frame the feed appends meanwhile.
        """
        if self._fd is None:
            await asyncio.Event().wait()  # no doorbell: the caller's timeout decides
            return
        fd = self._fd
        loop = asyncio.get_running_loop()
        rung = loop.create_future()

        def on_ring() -> None:
            self.clear()  # the FIFO is level-triggered: empty it, or it fires again at once
            if not rung.done():
                rung.set_result(None)

        loop.add_reader(fd, on_ring)
        try:
            await rung
        finally:
            loop.remove_reader(fd)
