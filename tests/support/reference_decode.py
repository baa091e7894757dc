"""The decoder as it was before writers wrote COPY rows themselves: a reference for tests.

It reads the same protobuf attributes into ``Tick`` records (datetimes, lists),
independently of collector.core.pgcopy; asyncpg then encodes those records.
tests/writer/test_pgcopy.py holds the writer's rows to what this and asyncpg store.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from collector.core.records import Bar, Frame, FrameKind, StatusChange, Tick
from collector.core.times import EPOCH, MAX_EPOCH_MS
from collector.exceptions import DecodeError
from collector.proto import MarketDataFeedV3_pb2 as pb

__all__ = ["decode_frame"]

_FRAME_KINDS: dict[int, FrameKind] = {
    pb.initial_feed: "initial_feed",
    pb.live_feed: "live_feed",
    pb.market_info: "market_info",
}
_STATUS_NAMES = {v.number: v.name for v in pb.MarketStatus.DESCRIPTOR.values}
# Records are built with tuple.__new__ directly: a named tuple's own __new__ is a
# Python function, a frame per tick on the hottest path of the collector.
_R = TypeVar("_R")


class _TupleNew(Protocol):
    def __call__(self, cls: type[_R], values: tuple[Any, ...], /) -> _R: ...


_new: _TupleNew = tuple.__new__  # type: ignore[assignment]  # a C slot, typed for our records


def epoch_ms(ms: int, what: str) -> datetime:
    """Convert epoch milliseconds to an aware UTC datetime, or raise DecodeError."""
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise DecodeError(f"{what} out of range: {ms}")
    return _from_ms(ms)


@functools.lru_cache(maxsize=1 << 16)
def _from_ms(ms: int) -> datetime:
    # The same instants come again and again: a bar's start for its whole minute
    # or day, an instrument's last trade time until it trades again, a frame's
    # time for every instrument in it. Remembering them saves a datetime per use.
    return EPOCH + timedelta(milliseconds=ms)


def decode_frame(data: bytes, received_at: datetime) -> Frame:
    """Decode one binary frame.

    ``received_at`` is when the frame arrived (the caller's clock). Raises
    :class:`DecodeError`, and only that, on anything malformed.
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
    feed_time = epoch_ms(msg.currentTs, "currentTs") if msg.currentTs else received_at
    frame = Frame(kind=kind, feed_time=feed_time)
    if msg.HasField("marketInfo"):
        frame.statuses = _statuses(msg.marketInfo, feed_time, received_at)
    snapshot = kind == "initial_feed"
    ticks = frame.ticks
    bars = frame.bars
    for key, feed in msg.feeds.items():
        if not key:
            raise DecodeError("feed with an empty instrument key")
        tick = _tick(key, feed, snapshot, feed_time, received_at, bars)
        if tick is not None:
            ticks.append(tick)
    return frame


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


def _tick(
    key: str,
    feed: pb.Feed,
    snapshot: bool,
    feed_time: datetime,
    received_at: datetime,
    bars: list[Bar],
) -> Tick | None:
    which = feed.WhichOneof("FeedUnion")
    if which == "ltpc":
        ltpc = feed.ltpc
        return _base(key, "ltpc", ltpc, snapshot, feed_time, received_at)
    if which == "firstLevelWithGreeks":
        flg = feed.firstLevelWithGreeks
        q = flg.firstDepth
        g = flg.optionGreeks
        time, ltp, ltq, cp, iep = _trade(flg.ltpc, feed_time)
        return _new(Tick, (
            time, key, "option_greeks", snapshot, feed_time, received_at, ltp, ltq, cp,
            None, flg.vtt, flg.oi, flg.iv, None, None, None, q.bidP, q.bidQ, q.askP, q.askQ,
            g.delta, g.theta, g.gamma, g.vega, g.rho, iep, None, None, None, None,
        ))  # fmt: skip
    if which == "fullFeed":
        full = feed.fullFeed
        sub = full.WhichOneof("FullFeedUnion")
        if sub == "marketFF":
            return _market(key, full.marketFF, feed.requestMode, snapshot, feed_time, received_at, bars)
        if sub == "indexFF":
            index = full.indexFF
            _bars(key, index.marketOHLC, received_at, bars)
            return _base(key, "index", index.ltpc, snapshot, feed_time, received_at)
    # A feed with no payload carries nothing to store.
    return None


def _trade(ltpc: pb.LTPC, feed_time: datetime) -> tuple[datetime, float, int, float, float | None]:
    """(time, ltp, ltq, cp, iep) of an LTPC; time is the trade time, else the frame's."""
    ltt = ltpc.ltt
    time = epoch_ms(ltt, "ltt") if ltt else feed_time
    iep = ltpc.iep.value if ltpc.HasField("iep") else None
    return time, ltpc.ltp, ltpc.ltq, ltpc.cp, iep


def _base(
    key: str, kind: str, ltpc: pb.LTPC, snapshot: bool, feed_time: datetime, received_at: datetime
) -> Tick:
    time, ltp, ltq, cp, iep = _trade(ltpc, feed_time)
    return _new(Tick, (
        time, key, kind, snapshot, feed_time, received_at, ltp, ltq, cp,
        None, None, None, None, None, None, None, None, None, None, None,
        None, None, None, None, None, iep, None, None, None, None,
    ))  # fmt: skip


def _market(
    key: str,
    mff: pb.MarketFullFeed,
    request_mode: int,
    snapshot: bool,
    feed_time: datetime,
    received_at: datetime,
    bars: list[Bar],
) -> Tick:
    quotes = mff.marketLevel.bidAskQuote
    kind = "full_d30" if request_mode == pb.full_d30 or len(quotes) > 5 else "full"
    ltpc = mff.ltpc
    ltt = ltpc.ltt
    time = epoch_ms(ltt, "ltt") if ltt else feed_time
    iep = mff.iep or (ltpc.iep.value if ltpc.HasField("iep") else None)
    g = mff.optionGreeks
    # One pass over the levels: each step through a repeated field makes a wrapper object.
    bid_prices: list[float] = []
    bid_qtys: list[int] = []
    ask_prices: list[float] = []
    ask_qtys: list[int] = []
    for q in quotes:
        bid_prices.append(q.bidP)
        bid_qtys.append(q.bidQ)
        ask_prices.append(q.askP)
        ask_qtys.append(q.askQ)
    _bars(key, mff.marketOHLC, received_at, bars)
    best_bid: float | None = None
    best_bid_qty: int | None = None
    best_ask: float | None = None
    best_ask_qty: int | None = None
    if quotes:
        best_bid, best_bid_qty, best_ask, best_ask_qty = (
            bid_prices[0],
            bid_qtys[0],
            ask_prices[0],
            ask_qtys[0],
        )
    return _new(Tick, (
        time, key, kind, snapshot, feed_time, received_at, ltpc.ltp, ltpc.ltq, ltpc.cp,
        None, mff.vtt, mff.oi, mff.iv, mff.atp, mff.tbq, mff.tsq,
        best_bid, best_bid_qty, best_ask, best_ask_qty,
        g.delta, g.theta, g.gamma, g.vega, g.rho, iep,
        bid_prices, bid_qtys, ask_prices, ask_qtys,
    ))  # fmt: skip


def _bars(key: str, ohlc: pb.MarketOHLC, received_at: datetime, out: list[Bar]) -> None:
    for bar in ohlc.ohlc:
        ts = bar.ts
        interval = bar.interval
        if not interval or not ts:
            continue  # an empty bar: nothing traded in it yet
        out.append(_new(Bar, (
            key, interval, epoch_ms(ts, "ohlc.ts"), bar.open, bar.high, bar.low, bar.close, bar.vol, received_at,
        )))  # fmt: skip
