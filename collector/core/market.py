"""Market status per segment: as the feed's ``market_info`` frames report it, and as it is. No I/O.

Silence on the socket is normal while a segment is closed (Upstox has no
application heartbeat), so liveness checks ask this state whether data is
expected before treating silence as a problem.

The feed process reads ``segmentStatus`` out of a ``market_info`` frame with
:func:`segment_status`, a few lines of protobuf wire format, so that it never
imports protobuf (the writer decodes every frame in full; the feed only needs
this map, and a lean feed process starts with a fraction of the memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, get_args

from collector.core.calendar import Calendar
from collector.core.records import StatusChange

__all__ = ["MARKET_STATUSES", "OPEN_STATUSES", "MarketState", "MarketStatus", "MarketView", "segment_status"]

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


# -- segmentStatus, straight from the wire -------------------------------------------------
# FeedResponse.marketInfo is field 4 (a message); MarketInfo.segmentStatus is its
# field 1, a map<string, MarketStatus>: each entry a message with the key as
# field 1 (string) and the value as field 2 (an enum, a varint; proto3 leaves
# out a 0). Wire types: 0 varint, 1 eight bytes, 2 length-delimited, 5 four bytes.


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of one message; raises ValueError."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("field runs past the end of its message")
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > len(data):
                raise ValueError("field runs past the end of its message")
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"wire type {wire} is not used by this schema")
        if number == 0:
            raise ValueError("field number 0")
        out.append((number, wire, value))
    return out


def segment_status(frame: bytes) -> dict[str, str]:
    """The ``segmentStatus`` map of a ``FeedResponse`` frame: segment -> status name.

    Agrees with protobuf's decoding (tests/core/test_market_info.py compares them on real
    frames); a status number this schema does not know reads as its number, as
    in :func:`collector.core.decode.decode_rows`. Raises ValueError on a malformed frame.
    """
    out: dict[str, str] = {}
    for number, wire, info in _fields(frame):
        if number != 4 or wire != 2:
            continue
        assert isinstance(info, bytes)
        for n, w, entry in _fields(info):
            if n != 1 or w != 2:
                continue
            assert isinstance(entry, bytes)
            segment, status = "", 0
            fields = _fields(entry)
            if any((fn, fw) not in ((1, 2), (2, 0)) for fn, fw, _ in fields):
                continue  # an entry with fields a map entry never has: protobuf keeps it aside, unread
            for fn, _, value in fields:
                if fn == 1:
                    assert isinstance(value, bytes)
                    segment = value.decode()
                else:
                    assert isinstance(value, int)
                    # An enum is an int32: protobuf keeps the low 32 bits, signed.
                    status = value & 0xFFFFFFFF
                    status -= (status >> 31) << 32
            out[segment] = MARKET_STATUSES[status] if 0 <= status < len(MARKET_STATUSES) else str(status)
    return out


class MarketView:
    """Whether each segment is open now, whatever state the connections are in.

    Upstox's ``market_info`` frames say it while a connection is up, but only
    while it is up: a collector that cannot connect (a rejected token, the
    network, the 03:30 IST token expiry overnight) hears nothing, and the last
    status it heard (closed, last evening) is stale all next day. So a
    connection's report counts only while that connection is connected and only
    if it is newer than the calendar's latest open or close of the segment;
    otherwise the exchange calendar decides (the one that decides gaps). A
    report newer than the calendar's edge wins over it: Upstox knows of an
    unscheduled close or a special session the calendar does not.
    """

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        # connection -> segment -> (status, when reported); only connected connections are here.
        self._reports: dict[int, dict[str, tuple[str, datetime]]] = {}

    def connected(self, connection: int) -> None:
        self._reports.setdefault(connection, {})

    def disconnected(self, connection: int) -> None:
        self._reports.pop(connection, None)

    def report(self, connection: int, segment: str, status: str, at: datetime) -> None:
        """A connection heard ``status`` for ``segment`` at ``at`` (ignored unless it is connected)."""
        reports = self._reports.get(connection)
        if reports is not None:
            reports[segment] = (status, at)

    def is_open(self, segment: str, now: datetime) -> bool:
        newest: tuple[str, datetime] | None = None
        for reports in self._reports.values():
            r = reports.get(segment)
            if r is not None and (newest is None or r[1] > newest[1]):
                newest = r
        edge = self.calendar.last_change(segment, now)
        if newest is not None and (edge is None or newest[1] >= edge):
            return newest[0] in OPEN_STATUSES
        return self.calendar.is_open(segment, now)
