"""Decode Upstox V3 ``FeedResponse`` frames into rows to store. No I/O.

Protobuf parses the frame (in C); from it we read only the fields we store,
attribute by attribute, and write each tick straight into PostgreSQL's binary
COPY format (:mod:`collector.core.pgcopy`): no dict, no intermediate record, no
datetime. ``MessageToDict`` (what the official SDK does per frame) costs
~80x the parse, turns int64 into strings and drops zeros.

A tick becomes a :class:`~collector.records.TickRow`: the few values the
sequencer needs (key, time, ltp, vtt, ltq, snapshot) and the row's bytes in
two pieces, before and after the ``volume`` column, which only the sequencer
can fill. :func:`decode_frame` gives the same ticks as ``Tick`` records, read
back from those bytes, for everything that is not the writer's hot path.

proto3 omits default values, so an absent number reads as 0 and an
``initial_feed`` frame carries no ``type`` field at all (Type 0). Unknown
fields, which Upstox adds over time, are kept aside by protobuf and ignored.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from collector.core.pgcopy import BAR_TYPES, NULL, PG_EPOCH_US, decode_row, tick_from_row
from collector.core.records import Bar, BarRow, Frame, FrameKind, StatusChange, TickRow
from collector.core.times import EPOCH, MAX_EPOCH_MS
from collector.exceptions import DecodeError
from collector.proto import MarketDataFeedV3_pb2 as pb

__all__ = ["FrameRows", "decode_frame", "decode_rows", "epoch_ms"]

_US = timedelta(microseconds=1)
_FRAME_KINDS: dict[int, FrameKind] = {
    pb.initial_feed: "initial_feed",
    pb.live_feed: "live_feed",
    pb.market_info: "market_info",
}
_STATUS_NAMES = {v.number: v.name for v in pb.MarketStatus.DESCRIPTOR.values}
_FULL_D30 = pb.full_d30
_PG_EPOCH_MS = PG_EPOCH_US // 1000

# Records are built with tuple.__new__ directly: a named tuple's own __new__ is a
# Python function, a frame per tick on the hottest path of the collector.
_R = TypeVar("_R")


class _TupleNew(Protocol):
    def __call__(self, cls: type[_R], values: tuple[Any, ...], /) -> _R: ...


_new: _TupleNew = tuple.__new__  # type: ignore[assignment]  # a C slot, typed for our records

# -- the row layout: ticks (collector.pgcopy.TICK_TYPES) ---------------------------------------

# Field count and time; then the key and kind texts; snapshot, feed_time, received_at
# (the frame's, encoded once per frame); ltp, ltq, cp. Then volume (the sequencer's), then:
_HEAD = struct.Struct(">hiq").pack
_TRADE = struct.Struct(">idiqid").pack  # ltp, ltq, cp
_FRAME = struct.Struct(">iqiq").pack
_SNAPSHOT = {True: b"\x00\x00\x00\x01\x01", False: b"\x00\x00\x00\x01\x00"}
_TAIL_NULLS = NULL * 20  # vtt .. ask_qtys of an ltpc or index row without iep
_NO_IEP_TAIL = NULL * 4  # the depth arrays of ltpc, index and option_greeks rows
_FLOAT8 = struct.Struct(">id").pack
_GREEKS_TAIL = struct.Struct(">iqidid" + "iii" + "idiqidiq" + "id" * 5).pack  # vtt .. rho


def _kind(name: str) -> bytes:
    data = name.encode()
    return struct.pack(">i", len(data)) + data


_KIND = {k: _kind(k) for k in ("ltpc", "index", "option_greeks", "full", "full_d30")}


_GENERATED_LEVELS = 64  # deeper books (never seen: Upstox sends 5 or 30) take the general path


@functools.cache
def _full_tail(levels: int, iep: bool) -> Any:
    """The encoder of a full row from vtt on, for ``levels`` of depth, with or without iep.

    Generated per depth: reading each level into locals and packing them in one
    struct call is 4x faster than building four lists and interleaving their
    elements with their lengths (measured: 0.23 against 1.0 us per array of 5).
    Generated from two integers only; nothing from a frame reaches the source.
    """
    codes = ">iq" + "id" * 5 + ("idiqidiq" if levels else "iiii") + "id" * 5 + ("id" if iep else "i")
    args = ["8, vtt, 8, mff.oi, 8, mff.iv, 8, mff.atp, 8, mff.tbq, 8, mff.tsq"]
    args.append("8, bp0, 8, bq0, 8, ap0, 8, aq0" if levels else "-1, -1, -1, -1")
    args.append("8, g.delta, 8, g.theta, 8, g.gamma, 8, g.vega, 8, g.rho")
    args.append("8, iep" if iep else "-1")
    lines = ["def tail(mff, quotes, vtt, iep):", "    g = mff.optionGreeks"]
    if levels:
        lines.append(f"    {', '.join(f'q{i}' for i in range(levels))}, = quotes")
        for i in range(levels):
            lines.append(f"    bp{i} = q{i}.bidP; bq{i} = q{i}.bidQ; ap{i} = q{i}.askP; aq{i} = q{i}.askQ")
    for name, element, oid in (("bp", "d", 701), ("bq", "q", 20), ("ap", "d", 701), ("aq", "q", 20)):
        if levels:
            codes += "iiiiii" + ("i" + element) * levels
            args.append(f"{20 + 12 * levels}, 1, 0, {oid}, {levels}, 1")
            args.extend(f"8, {name}{i}" for i in range(levels))
        else:
            codes += "iiii"
            args.append(f"12, 0, 0, {oid}")  # an empty array: ndim 0, as array_send writes it
    lines.append(f"    return pack({', '.join(args)})")
    scope: dict[str, Any] = {"pack": struct.Struct(codes).pack}
    exec(compile("\n".join(lines), f"<full tail, {levels} levels>", "exec"), scope)
    return scope["tail"]


def _deep_tail(mff: pb.MarketFullFeed, quotes: Any, vtt: int, iep: float | None) -> bytes:
    """A full row from vtt on, for books deeper than the generated encoders go."""
    g = mff.optionGreeks
    bp: list[Any] = []
    bq: list[Any] = []
    ap: list[Any] = []
    aq: list[Any] = []
    for q in quotes:
        bp += (8, q.bidP)
        bq += (8, q.bidQ)
        ap += (8, q.askP)
        aq += (8, q.askQ)
    n = len(quotes)
    codes = ">iq" + "id" * 5 + "idiqidiq" + "id" * 5 + ("i" if iep is None else "id")
    for element in "dqdq":
        codes += "iiiiii" + ("i" + element) * n
    return struct.pack(
        codes, 8, vtt, 8, mff.oi, 8, mff.iv, 8, mff.atp, 8, mff.tbq, 8, mff.tsq,
        8, bp[1], 8, bq[1], 8, ap[1], 8, aq[1],
        8, g.delta, 8, g.theta, 8, g.gamma, 8, g.vega, 8, g.rho, *((-1,) if iep is None else (8, iep)),
        20 + 12 * n, 1, 0, 701, n, 1, *bp, 20 + 12 * n, 1, 0, 20, n, 1, *bq,
        20 + 12 * n, 1, 0, 701, n, 1, *ap, 20 + 12 * n, 1, 0, 20, n, 1, *aq,
    )  # fmt: skip


# -- frames -----------------------------------------------------------------------------------


@dataclass(slots=True)
class FrameRows:
    """Everything decoded from one binary frame; times in microseconds since the Unix epoch."""

    kind: FrameKind
    feed_time_us: int
    ticks: list[TickRow] = field(default_factory=list)
    bars: list[BarRow] = field(default_factory=list)
    statuses: list[StatusChange] = field(default_factory=list)


def epoch_ms(ms: int, what: str) -> datetime:
    """Convert epoch milliseconds to an aware UTC datetime, or raise DecodeError."""
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise DecodeError(f"{what} out of range: {ms}")
    return _from_ms(ms)


@functools.lru_cache(maxsize=1 << 16)
def _from_ms(ms: int) -> datetime:
    # The same instants come again and again: a bar's start for its whole minute
    # or day, a frame's time for every instrument in it.
    return EPOCH + timedelta(milliseconds=ms)


def _checked_ms(ms: int, what: str) -> int:
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise DecodeError(f"{what} out of range: {ms}")
    return ms


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """The key as a text field (remembered: the same keys come in every frame)."""
    data = _KEYS.get(key)
    if data is None:
        if not key:
            raise DecodeError("feed with an empty instrument key")
        raw = key.encode()
        data = struct.pack(">i", len(raw)) + raw
        if len(_KEYS) >= 1 << 16:
            _KEYS.clear()
        _KEYS[key] = data
    return data


def decode_rows(data: bytes, received_us: int) -> FrameRows:
    """Decode one binary frame into rows.

    ``received_us`` is when the frame arrived (the caller's clock, microseconds
    since the Unix epoch). Raises :class:`DecodeError`, and only that, on
    anything malformed.
    """
    msg = pb.FeedResponse()
    try:
        msg.ParseFromString(data)
    except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"not a FeedResponse: {exc}") from None
    kind = _FRAME_KINDS.get(msg.type)
    if kind is None:
        raise DecodeError(f"unknown frame type {msg.type}")
    # currentTs may be absent (0) in a frame; fall back to our receive time.
    ts = msg.currentTs
    feed_us = _checked_ms(ts, "currentTs") * 1000 if ts else received_us
    rows = FrameRows(kind, feed_us)
    received_at = EPOCH + timedelta(microseconds=received_us)
    if msg.HasField("marketInfo"):
        rows.statuses = _statuses(msg.marketInfo, EPOCH + timedelta(microseconds=feed_us), received_at)
    feeds = msg.feeds
    if not feeds:
        return rows
    snapshot = kind == "initial_feed"
    # snapshot, feed_time and received_at: the same for every tick of the frame.
    frame = _SNAPSHOT[snapshot] + _FRAME(8, feed_us - PG_EPOCH_US, 8, received_us - PG_EPOCH_US)
    feed_pg_us = feed_us - PG_EPOCH_US
    received_pg_us = received_us - PG_EPOCH_US
    ticks = rows.ticks
    bars = rows.bars
    for key, feed in feeds.items():
        which = feed.WhichOneof("FeedUnion")
        if which == "fullFeed":
            full = feed.fullFeed
            if full.HasField("marketFF"):
                ticks.append(_market(key, full.marketFF, feed.requestMode, snapshot, frame, feed_pg_us))
                ohlc = full.marketFF.marketOHLC.ohlc
            elif full.HasField("indexFF"):
                index = full.indexFF
                ticks.append(_base(key, "index", index.ltpc, snapshot, frame, feed_pg_us))
                ohlc = index.marketOHLC.ohlc
            else:
                _key(key)  # no payload, nothing to store; the key must still be valid
                continue
            if ohlc:
                _bars(key, ohlc, received_pg_us, bars)
        elif which == "ltpc":
            ticks.append(_base(key, "ltpc", feed.ltpc, snapshot, frame, feed_pg_us))
        elif which == "firstLevelWithGreeks":
            ticks.append(_greeks(key, feed.firstLevelWithGreeks, snapshot, frame, feed_pg_us))
        else:
            _key(key)  # a feed with no payload carries nothing to store
    return rows


def decode_frame(data: bytes, received_at: datetime) -> Frame:
    """Decode one binary frame into records (``Tick`` with ``volume`` unset).

    The same decoding as :func:`decode_rows`, read back from the rows' bytes:
    for tests, tools and the simulator, not for the writer's hot path.
    """
    rows = decode_rows(data, (received_at - EPOCH) // _US)
    return Frame(
        kind=rows.kind,
        feed_time=EPOCH + timedelta(microseconds=rows.feed_time_us),
        ticks=[tick_from_row(t.head + NULL + t.tail) for t in rows.ticks],
        bars=[Bar._make(decode_row(BAR_TYPES, b.row)) for b in rows.bars],
        statuses=rows.statuses,
    )


def _statuses(info: pb.MarketInfo, feed_time: datetime, received_at: datetime) -> list[StatusChange]:
    out = [
        StatusChange(segment, "normal", _STATUS_NAMES.get(status, str(status)), feed_time, received_at)
        for segment, status in info.segmentStatus.items()
    ]
    for session, entries in (("pre_open", info.preOpenSessionStatus), ("cas", info.casMarketStatus)):
        for segment, status_info in entries.items():
            when = epoch_ms(status_info.updatedTime, "updatedTime") if status_info.updatedTime else feed_time
            out.append(StatusChange(segment, session, status_info.status, when, received_at))
    return out


def _base(key: str, kind: str, ltpc: pb.LTPC, snapshot: bool, frame: bytes, feed_pg_us: int) -> TickRow:
    """An ltpc or index tick: ltp, ltq, cp, iep; the rest is NULL."""
    ltt = ltpc.ltt
    t = (_checked_ms(ltt, "ltt") - _PG_EPOCH_MS) * 1000 if ltt else feed_pg_us
    ltp, ltq, cp = ltpc.ltp, ltpc.ltq, ltpc.cp
    head = b"".join((_HEAD(30, 8, t), _key(key), _KIND[kind], frame, _TRADE(8, ltp, 8, ltq, 8, cp)))
    if ltpc.HasField("iep"):
        tail = NULL * 15 + _FLOAT8(8, ltpc.iep.value) + _NO_IEP_TAIL
    else:
        tail = _TAIL_NULLS
    return _new(TickRow, (key, kind, t + PG_EPOCH_US, ltp, None, ltq, snapshot, head, tail))


def _greeks(key: str, flg: pb.FirstLevelWithGreeks, snapshot: bool, frame: bytes, feed_pg_us: int) -> TickRow:
    ltpc = flg.ltpc
    ltt = ltpc.ltt
    t = (_checked_ms(ltt, "ltt") - _PG_EPOCH_MS) * 1000 if ltt else feed_pg_us
    ltp, ltq, cp, vtt = ltpc.ltp, ltpc.ltq, ltpc.cp, flg.vtt
    q = flg.firstDepth
    g = flg.optionGreeks
    head = b"".join(
        (_HEAD(30, 8, t), _key(key), _KIND["option_greeks"], frame, _TRADE(8, ltp, 8, ltq, 8, cp))
    )
    tail = _GREEKS_TAIL(
        8, vtt, 8, flg.oi, 8, flg.iv, -1, -1, -1, 8, q.bidP, 8, q.bidQ, 8, q.askP, 8, q.askQ,
        8, g.delta, 8, g.theta, 8, g.gamma, 8, g.vega, 8, g.rho,
    )  # fmt: skip
    iep = _FLOAT8(8, ltpc.iep.value) if ltpc.HasField("iep") else NULL
    return _new(TickRow, (key, "option_greeks", t + PG_EPOCH_US, ltp, vtt, ltq, snapshot, head,
                          tail + iep + _NO_IEP_TAIL))  # fmt: skip


def _market(
    key: str, mff: pb.MarketFullFeed, request_mode: int, snapshot: bool, frame: bytes, feed_pg_us: int
) -> TickRow:
    quotes = mff.marketLevel.bidAskQuote
    levels = len(quotes)
    kind = "full_d30" if request_mode == _FULL_D30 or levels > 5 else "full"
    ltpc = mff.ltpc
    ltt = ltpc.ltt
    t = (_checked_ms(ltt, "ltt") - _PG_EPOCH_MS) * 1000 if ltt else feed_pg_us
    ltp, ltq, cp, vtt = ltpc.ltp, ltpc.ltq, ltpc.cp, mff.vtt
    head = b"".join((_HEAD(30, 8, t), _key(key), _KIND[kind], frame, _TRADE(8, ltp, 8, ltq, 8, cp)))
    iep = mff.iep or (ltpc.iep.value if ltpc.HasField("iep") else None)
    if levels <= _GENERATED_LEVELS:
        tail = _full_tail(levels, iep is not None)(mff, quotes, vtt, iep)
    else:
        tail = _deep_tail(mff, quotes, vtt, iep)
    return _new(TickRow, (key, kind, t + PG_EPOCH_US, ltp, vtt, ltq, snapshot, head, tail))


_BAR = struct.Struct(">iqididididiqiq").pack  # bar_start, open, high, low, close, volume, updated_at
_BAR_FIELDS = b"\x00\x09"
_INTERVALS: dict[str, bytes] = {}


def _bars(key: str, ohlc: Any, received_pg_us: int, out: list[BarRow]) -> None:
    """The exchange's bars of a tick, as rows of exchange_bars (updated_at: the receive time)."""
    head = _BAR_FIELDS + _key(key)
    for bar in ohlc:
        ts = bar.ts
        interval = bar.interval
        if not interval or not ts:
            continue  # an empty bar: nothing traded in it yet
        name = _INTERVALS.get(interval)
        if name is None:
            raw = interval.encode()
            name = struct.pack(">i", len(raw)) + raw
            if len(_INTERVALS) < 64:  # a handful of intervals exist; never grow without bound
                _INTERVALS[interval] = name
        start = (_checked_ms(ts, "ohlc.ts") - _PG_EPOCH_MS) * 1000
        row = (
            head
            + name
            + _BAR(
                8, start, 8, bar.open, 8, bar.high, 8, bar.low, 8, bar.close, 8, bar.vol, 8, received_pg_us
            )
        )
        out.append(_new(BarRow, ((key, interval, ts), row)))
