"""An append-only disk spool of batches, for when the database is away.

Segments ``NNNNNNNNNN.spool`` hold records ``[length u32][crc32 u32][rows u32][payload]``
where the payload is a pickled :class:`~collector.batch.Batch` written by this
process (never read from elsewhere). Batches are read back oldest first and
acknowledged once committed; a segment is deleted when every batch in it is.

After a crash a record may be torn at the end of the last segment: reading
stops there (its length or CRC does not check out) and the collector writes on
in a new segment. A batch replayed twice (crash between commit and
acknowledgement) is recognised by the ingest ledger, so nothing is stored twice.

At ``max_bytes`` :meth:`append` raises :class:`SpoolFullError`; the writer then
stops taking frames from the feed until the spool drains (accepted data is
never dropped; the feed falls behind instead).
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from collector.batch import Batch
from collector.exceptions import SpoolFullError

__all__ = ["Spool"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">III")


class Spool:
    """Batches on disk, first in first out."""

    def __init__(
        self, directory: Path, *, max_bytes: int, fsync: bool = True, segment_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[Path] = sorted(directory.glob("*.spool"))
        self.bytes = sum(p.stat().st_size for p in self._segments)
        self.rows = 0
        self.batches = 0
        for path in self._segments:
            for _, rows, _ in self._scan(path):
                self.rows += rows
                self.batches += 1
        self._next_number = int(self._segments[-1].stem) + 1 if self._segments else 1
        self._write: tuple[Path, BinaryIO] | None = None  # never appended to a pre-existing segment
        self._read_offset = 0
        self._head: tuple[Batch, int, int] | None = None  # batch, rows, record size
        if self.batches:
            logger.warning("spool holds %d batches (%d rows) from an earlier run", self.batches, self.rows)

    def __len__(self) -> int:
        return self.batches

    @staticmethod
    def _scan(path: Path, start: int = 0) -> list[tuple[int, int, int]]:
        """(offset, rows, size) of each intact record from ``start``."""
        out = []
        with path.open("rb") as f:
            f.seek(start)
            offset = start
            while True:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                length, crc, rows = _HEADER.unpack(header)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    logger.warning("spool %s: torn record at offset %d ignored", path.name, offset)
                    break
                size = _HEADER.size + length
                out.append((offset, rows, size))
                offset += size
        return out

    def iter_batches(self) -> Iterator[Batch]:
        """Every batch in the spool, oldest first, without consuming any."""
        for i, path in enumerate(list(self._segments)):
            start = self._read_offset if i == 0 else 0
            with path.open("rb") as f:
                for offset, _, size in self._scan(path, start):
                    f.seek(offset + _HEADER.size)
                    yield pickle.loads(f.read(size - _HEADER.size))

    def append(self, batch: Batch) -> None:
        """Write a batch durably at the end of the spool."""
        payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        record = _HEADER.pack(len(payload), zlib.crc32(payload), batch.rows) + payload
        if self.bytes + len(record) > self.max_bytes:
            raise SpoolFullError(f"spool at {self.bytes} bytes cannot take {len(record)} more")
        if self._write is None or self._write[0].stat().st_size >= self.segment_bytes:
            self._roll()
        assert self._write is not None
        f = self._write[1]
        f.write(record)
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        self.bytes += len(record)
        self.rows += batch.rows
        self.batches += 1

    def _roll(self) -> None:
        if self._write is not None:
            self._write[1].close()
        path = self.directory / f"{self._next_number:010d}.spool"
        self._next_number += 1
        self._write = (path, path.open("ab"))
        self._segments.append(path)
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def peek(self) -> Batch | None:
        """The oldest batch not yet acknowledged, or None."""
        if self._head is not None:
            return self._head[0]
        while self._segments:
            path = self._segments[0]
            records = self._scan(path, self._read_offset)
            if records:
                offset, rows, size = records[0]
                with path.open("rb") as f:
                    f.seek(offset + _HEADER.size)
                    batch: Batch = pickle.loads(f.read(size - _HEADER.size))
                self._head = (batch, rows, size)
                return batch
            if self._write is not None and self._write[0] == path:
                return None  # the live segment is fully read; it may grow
            self._drop_segment(path)
        return None

    def ack(self) -> None:
        """Mark the batch returned by :meth:`peek` as committed."""
        if self._head is None:
            raise RuntimeError("ack without peek")
        _, rows, size = self._head
        self._head = None
        self._read_offset += size
        self.bytes -= size
        self.rows -= rows
        self.batches -= 1
        path = self._segments[0]
        if self.batches == 0 and self._write is not None and self._write[0] == path:
            # Everything is read: start afresh so the file does not grow forever.
            self._write[1].close()
            self._write = None
            self._drop_segment(path)
        elif self._read_offset >= path.stat().st_size and not (self._write and self._write[0] == path):
            self._drop_segment(path)

    def _drop_segment(self, path: Path) -> None:
        remaining = path.stat().st_size - self._read_offset if path.exists() else 0
        if remaining > 0:
            self.bytes -= remaining  # a torn tail
        path.unlink(missing_ok=True)
        self._segments.pop(0)
        self._read_offset = 0
        if self.batches == 0:
            self.bytes = 0

    def close(self) -> None:
        if self._write is not None:
            self._write[1].close()
            self._write = None
