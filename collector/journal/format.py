"""The journal's record format: framing, scanning, positions. No I/O.

Each feed connection appends every frame it reads to its own journal: a
folder of segment files named after the position of their first byte
(``00000000000000000000.journal``), so a position is one integer that grows
for the life of the journal, across segments. A record is::

    magic  4 bytes   b"\\xc0\\x11\\x0c\\x7a"
    length u32       payload bytes
    crc    u32       CRC-32 of kind, time and payload
    kind   u8        1 binary frame, 2 text frame, 3 connection event (JSON)
    time   i64       receive time, ns since the Unix epoch
    payload

all little-endian. The reader never trusts a record it cannot check: a record
whose magic, length or CRC is wrong is skipped up to the next place where a
whole record checks out (counted, never a crash), and a record cut short at
the end of the newest segment is "not yet written", not an error. A torn
record at the end of an older segment (a crash mid-write) is skipped.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

__all__ = [
    "EVENT",
    "FRAME",
    "HEADER",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "TEXT",
    "Record",
    "Scan",
    "encode_header",
    "scan",
]

MAGIC: Final = b"\xc0\x11\x0c\x7a"
HEADER: Final = struct.Struct("<4sIIBq")
FRAME: Final = 1
TEXT: Final = 2
EVENT: Final = 3
KINDS: Final = frozenset((FRAME, TEXT, EVENT))
# Upstox frames are far smaller; a larger length can only be corruption.
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
_KIND_TIME = struct.Struct("<Bq")


def _crc(kind: int, time_ns: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_KIND_TIME.pack(kind, time_ns)))


def encode_header(kind: int, time_ns: int, payload: bytes) -> bytes:
    """The header to write in front of ``payload`` (one ``writev`` with both)."""
    return HEADER.pack(MAGIC, len(payload), _crc(kind, time_ns, payload), kind, time_ns)


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record; ``end`` is the position just after it."""

    kind: int
    time_ns: int
    payload: bytes
    end: int


@dataclass(slots=True)
class Scan:
    """What :func:`scan` found in a buffer.

    ``consumed`` bytes of the buffer are accounted for (records, or skipped
    corruption); the rest is an incomplete record, or bytes that may still
    become one. ``skipped`` lists (position, bytes) of each corrupt stretch.
    """

    records: list[Record]
    consumed: int
    skipped: list[tuple[int, int]]


def _valid_at(buf: memoryview, i: int) -> int:
    """Length of the whole record at ``i`` if it checks out; 0 if it is corrupt; -1 if incomplete."""
    n = len(buf)
    if n - i < HEADER.size:
        # Too short to judge; a partial magic could still be a record.
        return -1 if MAGIC.startswith(bytes(buf[i : i + 4])[: n - i]) else 0
    magic, length, crc, kind, time_ns = HEADER.unpack_from(buf, i)
    if magic != MAGIC or kind not in KINDS or length > MAX_RECORD_BYTES:
        return 0
    end = i + HEADER.size + length
    if end > n:
        return -1
    if _crc(kind, time_ns, buf[i + HEADER.size : end]) != crc:
        return 0
    return int(HEADER.size + length)


def scan(data: bytes, base: int, *, final: bool) -> Scan:
    """Split ``data`` (read from journal position ``base``) into records.

    ``final`` says no more bytes will ever follow ``data`` (an older segment's
    end): an incomplete record there is torn and is skipped, instead of left
    for the next read.
    """
    buf = memoryview(data)
    n = len(buf)
    records: list[Record] = []
    skipped: list[tuple[int, int]] = []
    i = 0
    while i < n:
        size = _valid_at(buf, i)
        if size > 0:
            _, length, _, kind, time_ns = HEADER.unpack_from(buf, i)
            start = i + HEADER.size
            records.append(Record(kind, time_ns, bytes(buf[start : start + length]), base + i + size))
            i += size
            continue
        if size < 0 and not final:
            break  # not yet written
        # Corrupt (or torn, at a final end): resynchronise on the next record that checks out.
        j = i + 1
        while True:
            j = data.find(MAGIC, j)
            if j < 0:
                j = n
                # A magic cut at the very end may still complete.
                for k in range(max(i + 1, n - len(MAGIC) + 1), n):
                    if not final and MAGIC.startswith(data[k:]):
                        j = k
                        break
                break
            found = _valid_at(buf, j)
            if found > 0 or (found < 0 and not final):
                break
            j += 1
        skipped.append((base + i, j - i))
        i = j
        if j < n and _valid_at(buf, j) < 0:
            break  # the next record is not complete yet
    return Scan(records, i, skipped)
