"""PostgreSQL's binary COPY format, for the rows we store. No I/O.

asyncpg's ``copy_records_to_table`` encodes every value through a generic
codec and checks every element of every array: for the ticks' order-book
depth that was half of a writer's time. The format is simple (PostgreSQL's
documentation, "COPY", "Binary Format"), so the writer writes it itself and
hands the bytes to ``copy_to_table(..., format='binary')``::

    header   b"PGCOPY\\n\\xff\\r\\n\\0", flags int32 0, header extension length int32 0
    a row    field count int16; per field its length int32 (-1: NULL) and its bytes
    trailer  int16 -1

all in network byte order. Each value is in its type's binary ("send") form:
``timestamptz`` int64 microseconds since 2000-01-01 UTC, ``float8``/``int8``
8 bytes, ``int4`` 4, ``bool`` 1, ``text`` its UTF-8 bytes, and an array
``ndim, has-null flag, element type OID`` then, per dimension, ``length,
lower bound (1)``, then each element as a field (an empty array has ndim 0,
as ``array_send`` writes it).

The decoder writes tick rows straight into this format
(:func:`collector.core.decode.decode_rows`); this module holds the layout both
share, a general encoder of any row of known column types (used for the rare
rows built as tuples, and as the reference in tests), and a decoder back to
Python values (for dead letters and tests).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from collector.core.records import Tick

__all__ = [
    "BAR_TYPES",
    "HEADER",
    "NULL",
    "PG_EPOCH_US",
    "TICK_TYPES",
    "TRAILER",
    "CopyEncodeError",
    "bar_row",
    "decode_row",
    "encode_row",
    "encode_rows",
    "tick_from_row",
    "tick_parts",
    "tick_row",
]

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"
NULL: Final = b"\xff\xff\xff\xff"
# 2000-01-01 00:00 UTC in microseconds since the Unix epoch: PostgreSQL's epoch.
PG_EPOCH_US: Final = 946_684_800_000_000
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Element type OIDs (pg_type.oid) of the arrays we write.
_OIDS: Final = {"float8": 701, "int8": 20, "text": 25}
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_INT8 = struct.Struct(">iq")
_INT4 = struct.Struct(">ii")
_FLOAT8 = struct.Struct(">id")
_BOOL = {True: b"\x00\x00\x00\x01\x01", False: b"\x00\x00\x00\x01\x00"}

# Column types of a row, one letter per column: T timestamptz, s text, b bool,
# d float8, q int8, i int4, D float8[], Q int8[], S text[].
ColumnTypes = str
# The ticks table, in column order (collector.records.Tick).
TICK_TYPES: Final[ColumnTypes] = "TssbTTdqdqqddddddqdqddddddDQDQ"
assert len(TICK_TYPES) == len(Tick._fields)
_VOLUME = Tick._fields.index("volume")


class CopyEncodeError(ValueError):
    """A value its column's type cannot hold (a naive datetime, an int past int8, ...)."""


# -- encoding ---------------------------------------------------------------------------------


def _timestamptz(value: Any) -> bytes:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CopyEncodeError(f"timestamptz needs an aware datetime, not {value!r}")
    return _INT8.pack(8, (value - _PG_EPOCH) // _US)


def _text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise CopyEncodeError(f"text needs a str, not {type(value).__name__}")
    try:
        data = value.encode()
    except UnicodeEncodeError:  # a lone surrogate: not text PostgreSQL can hold
        raise CopyEncodeError(f"text that is not UTF-8: {value!r}") from None
    return _I32.pack(len(data)) + data


def _bool(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise CopyEncodeError(f"bool needs a bool, not {type(value).__name__}")
    return _BOOL[value]


def _float8(value: Any) -> bytes:
    if not isinstance(value, float | int):  # an int (or bool) as its double, as asyncpg does
        raise CopyEncodeError(f"float8 needs a number, not {type(value).__name__}")
    try:
        return _FLOAT8.pack(8, value)
    except OverflowError:
        raise CopyEncodeError(f"float8 cannot hold {value}") from None


def _integer(bits: int, fmt: struct.Struct) -> Callable[[Any], bytes]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def encode(value: Any) -> bytes:
        if not isinstance(value, int):
            raise CopyEncodeError(f"int{bits // 8} needs an int, not {type(value).__name__}")
        if not low <= value <= high:
            raise CopyEncodeError(f"int{bits // 8} cannot hold {value}")
        return fmt.pack(bits // 8, value)

    return encode


def _array(element: str, encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    oid = _OIDS[element]

    def encode_array(values: Any) -> bytes:
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise CopyEncodeError(f"{element}[] needs a list, not {type(values).__name__}")
        if not values:
            return b"\x00\x00\x00\x0c" + struct.pack(">iii", 0, 0, oid)
        body = b"".join(NULL if v is None else encode(v) for v in values)
        head = struct.pack(">iiiii", 1, any(v is None for v in values), oid, len(values), 1)
        return _I32.pack(len(head) + len(body)) + head + body

    return encode_array


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "T": _timestamptz,
    "s": _text,
    "b": _bool,
    "d": _float8,
    "q": _integer(64, _INT8),
    "i": _integer(32, _INT4),
}
_ENCODERS["D"] = _array("float8", _ENCODERS["d"])
_ENCODERS["Q"] = _array("int8", _ENCODERS["q"])
_ENCODERS["S"] = _array("text", _text)


def encode_row(types: ColumnTypes, row: Sequence[Any]) -> bytes:
    """One row of ``types`` in the binary COPY format; raises :class:`CopyEncodeError`."""
    if len(row) != len(types):
        raise CopyEncodeError(f"a row of {len(types)} columns has {len(row)} values")
    return _I16.pack(len(types)) + _fields(types, row)


def encode_rows(types: ColumnTypes, rows: Iterable[Sequence[Any]]) -> bytes:
    """A whole binary COPY stream (header, rows, trailer) of rows of ``types``."""
    return b"".join((HEADER, *(encode_row(types, row) for row in rows), TRAILER))


def _fields(types: ColumnTypes, values: Sequence[Any]) -> bytes:
    return b"".join(NULL if v is None else _ENCODERS[t](v) for t, v in zip(types, values, strict=True))


def tick_row(tick: Sequence[Any]) -> bytes:
    """A tick (in ``Tick`` order) as a row of ``ticks``."""
    return encode_row(TICK_TYPES, tick)


# exchange_bars, in column order (collector.records.Bar).
BAR_TYPES: Final[ColumnTypes] = "ssTddddqT"


def bar_row(bar: Sequence[Any]) -> bytes:
    """A bar (in ``Bar`` order) as a row of ``exchange_bars``."""
    return encode_row(BAR_TYPES, bar)


def tick_parts(tick: Sequence[Any]) -> tuple[bytes, bytes]:
    """A tick's row before and after its ``volume`` column (see ``TickRow``)."""
    if len(tick) != len(TICK_TYPES):
        raise CopyEncodeError(f"a tick has {len(TICK_TYPES)} columns, not {len(tick)}")
    return (
        _I16.pack(len(TICK_TYPES)) + _fields(TICK_TYPES[:_VOLUME], tick[:_VOLUME]),
        _fields(TICK_TYPES[_VOLUME + 1 :], tick[_VOLUME + 1 :]),
    )


# -- decoding ---------------------------------------------------------------------------------


def _decode_value(t: str, data: bytes) -> Any:
    if t == "T":
        return _PG_EPOCH + timedelta(microseconds=struct.unpack(">q", data)[0])
    if t == "s":
        return data.decode()
    if t == "b":
        return data == b"\x01"
    if t == "d":
        return struct.unpack(">d", data)[0]
    if t == "q":
        return struct.unpack(">q", data)[0]
    if t == "i":
        return struct.unpack(">i", data)[0]
    element = {"D": "d", "Q": "q", "S": "s"}[t]
    ndim, _, _ = struct.unpack_from(">iii", data)
    if ndim == 0:
        return []
    (n, _) = struct.unpack_from(">ii", data, 12)
    out: list[Any] = []
    i = 20
    for _ in range(n):
        (size,) = _I32.unpack_from(data, i)
        i += 4
        if size < 0:
            out.append(None)
        else:
            out.append(_decode_value(element, data[i : i + size]))
            i += size
    return out


def decode_row(types: ColumnTypes, row: bytes) -> tuple[Any, ...]:
    """The Python values of one binary COPY row of ``types`` (as asyncpg would read them back)."""
    (count,) = _I16.unpack_from(row)
    if count != len(types):
        raise ValueError(f"a row of {len(types)} columns has {count} fields")
    values: list[Any] = []
    i = 2
    for t in types:
        (size,) = _I32.unpack_from(row, i)
        i += 4
        if size < 0:
            values.append(None)
            continue
        values.append(_decode_value(t, row[i : i + size]))
        i += size
    if i != len(row):
        raise ValueError(f"{len(row) - i} bytes after the last field of a row")
    return tuple(values)


def tick_from_row(row: bytes) -> Tick:
    """The tick a row of ``ticks`` holds."""
    return Tick._make(decode_row(TICK_TYPES, row))
