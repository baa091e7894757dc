"""Encode V3 ``FeedResponse`` frames: the mirror of :mod:`collector.core.decode`. No I/O.

Both servers that speak the feed protocol build their frames here: the
simulator from its market, the replay from recorded rows.

A frame is joined from parts: protobuf parses concatenated messages as one
(scalars: the last wins; repeated fields and maps: appended), so a frame is
``type`` + one serialized ``feeds`` map entry per instrument + ``currentTs``.
``type`` comes first, as every serializer writes fields in number order (the
feed process tells frame kinds apart by those two bytes), and an
``initial_feed`` frame has none (proto3 omits 0). An entry serialized once can
be sent to every client that asked for it in the same mode.

:func:`tick_entry` turns a recorded :class:`~collector.core.records.Tick` back
into the feed it was decoded from, in the mode a client asked for:

- the recorded payload when the client asked for that mode or a richer one
  (nothing is invented: a key recorded in ``ltpc`` and asked for in ``full`` is
  served as ``ltpc``, and its ``requestMode`` says so);
- the part of it a poorer mode carries when the client asked for less, as the
  live feed would send it: ``ltpc`` from anything, ``option_greeks`` from
  ``full``/``full_d30`` (best bid/ask as its first level), 5 levels from
  ``full_d30``.

Times go over the wire in whole milliseconds (``ltt``, ``currentTs``,
``ohlc.ts``), as Upstox sends them. ``MarketFullFeed`` fields the ``ticks``
table does not keep (``rp``, ``ieq``, ``iiqTotal``, ``iiqM``, ``casEligible``)
are not sent; an ``iep`` is sent both as ``LTPC.iep`` and, in full mode, as
``MarketFullFeed.iep``, the two places the decoder reads it from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from collector.core.records import Bar, FrameKind, Mode, Tick
from collector.core.times import EPOCH
from collector.proto import MarketDataFeedV3_pb2 as pb

__all__ = [
    "RANK",
    "batches",
    "join",
    "market_info",
    "served_kind",
    "tick_entry",
    "to_ms",
]

_MS = timedelta(milliseconds=1)
# How much of the feed a mode or a recorded kind carries; "index" is an index's full payload.
RANK: Mapping[str, int] = {"ltpc": 0, "option_greeks": 1, "full": 2, "index": 2, "full_d30": 3}
_HEAD: Mapping[FrameKind, bytes] = {
    "initial_feed": b"",  # Type 0: proto3 writes nothing
    "live_feed": pb.FeedResponse(type=pb.live_feed).SerializeToString(),
    "market_info": pb.FeedResponse(type=pb.market_info).SerializeToString(),
}


def to_ms(t: datetime) -> int:
    """Whole milliseconds since the epoch (rounded down), as the wire carries times."""
    return (t - EPOCH) // _MS


def join(kind: FrameKind, current_ts_ms: int, entries: Iterable[bytes]) -> bytes:
    """One frame of ``kind`` from serialized ``feeds`` entries, sent at ``current_ts_ms``."""
    tail = pb.FeedResponse(currentTs=current_ts_ms).SerializeToString()
    return b"".join((_HEAD[kind], *entries, tail))


def batches(entries: Iterable[tuple[str, bytes]]) -> Iterator[list[bytes]]:
    """Group (key, entry) pairs into frames, in order: a map holds each key once,
    so a key seen again starts the next frame."""
    frame: list[bytes] = []
    keys: set[str] = set()
    for key, entry in entries:
        if key in keys:
            yield frame
            frame, keys = [], set()
        frame.append(entry)
        keys.add(key)
    if frame:
        yield frame


def market_info(
    current_ts_ms: int,
    segments: Mapping[str, int],
    *,
    pre_open: Mapping[str, tuple[str, int]] | None = None,
    cas: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """A ``market_info`` frame: ``MarketStatus`` per segment, and (status, updatedTime ms)
    per segment for the pre-open and closing auction sessions. Empty maps still make a
    ``marketInfo`` field: "nothing is known" is a frame too."""
    msg = pb.FeedResponse(type=pb.market_info, currentTs=current_ts_ms)
    info = msg.marketInfo
    info.SetInParent()
    for segment, status in segments.items():
        info.segmentStatus[segment] = status  # type: ignore[assignment]  # an enum value
    for target, source in ((info.preOpenSessionStatus, pre_open), (info.casMarketStatus, cas)):
        for segment, (status_text, updated_ms) in (source or {}).items():
            target[segment].status = status_text
            target[segment].updatedTime = updated_ms
    return msg.SerializeToString()


def served_kind(kind: str, asked: Mode) -> str:
    """The payload a recorded ``kind`` is served as to a client that asked for ``asked``."""
    if RANK[kind] <= RANK[asked]:
        return kind
    if asked == "full" and kind == "full_d30":
        return "full"
    return asked  # ltpc or option_greeks: the part of the payload that mode carries


def tick_entry(tick: Tick, asked: Mode, bars: Sequence[Bar] = ()) -> bytes:
    """The serialized ``feeds`` entry of a recorded tick, served for a client in ``asked`` mode.

    ``bars`` (the exchange's OHLC bars that arrived with the tick) ride along
    where the payload has room for them (full and index payloads).
    """
    msg = pb.FeedResponse()
    feed = msg.feeds[tick.instrument_key]
    kind = served_kind(tick.kind, asked)
    if kind == "ltpc":
        _ltpc(feed.ltpc, tick)
        feed.requestMode = pb.ltpc
    elif kind == "option_greeks":
        flg = feed.firstLevelWithGreeks
        _ltpc(flg.ltpc, tick)
        if tick.kind != "index":
            q = flg.firstDepth
            q.bidP, q.bidQ = tick.bid_price or 0.0, tick.bid_qty or 0
            q.askP, q.askQ = tick.ask_price or 0.0, tick.ask_qty or 0
            _greeks(flg.optionGreeks, tick)
            flg.vtt, flg.oi, flg.iv = tick.vtt or 0, tick.oi or 0.0, tick.iv or 0.0
        feed.requestMode = pb.option_greeks
    elif kind == "index":
        index = feed.fullFeed.indexFF
        _ltpc(index.ltpc, tick)
        _bars(index.marketOHLC, bars)
        feed.requestMode = pb.full_d5
    else:
        _market(feed.fullFeed.marketFF, tick, 30 if kind == "full_d30" else 5, bars)
        feed.requestMode = pb.full_d30 if kind == "full_d30" else pb.full_d5
    return msg.SerializeToString()


def _ltpc(ltpc: pb.LTPC, tick: Tick) -> None:
    ltpc.ltp = tick.ltp
    ltpc.ltt = to_ms(tick.time)
    ltpc.ltq = tick.ltq or 0
    ltpc.cp = tick.cp or 0.0
    if tick.iep is not None:
        ltpc.iep.value = tick.iep


def _greeks(g: pb.OptionGreeks, tick: Tick) -> None:
    values = (tick.delta, tick.theta, tick.gamma, tick.vega, tick.rho)
    if any(values):  # the live feed leaves the message out where there are no greeks
        g.delta, g.theta, g.gamma, g.vega, g.rho = (v or 0.0 for v in values)


def _market(mff: pb.MarketFullFeed, tick: Tick, levels: int, bars: Sequence[Bar]) -> None:
    _ltpc(mff.ltpc, tick)
    quotes = mff.marketLevel.bidAskQuote
    bid_p, bid_q = tick.bid_prices or [], tick.bid_qtys or []
    ask_p, ask_q = tick.ask_prices or [], tick.ask_qtys or []
    for i in range(min(levels, len(bid_p))):
        q = quotes.add()
        q.bidQ, q.bidP, q.askQ, q.askP = bid_q[i], bid_p[i], ask_q[i], ask_p[i]
    _greeks(mff.optionGreeks, tick)
    _bars(mff.marketOHLC, bars)
    mff.atp, mff.vtt, mff.oi, mff.iv = tick.atp or 0.0, tick.vtt or 0, tick.oi or 0.0, tick.iv or 0.0
    mff.tbq, mff.tsq = tick.tbq or 0.0, tick.tsq or 0.0
    if tick.iep:
        mff.iep = tick.iep


def _bars(ohlc: pb.MarketOHLC, bars: Sequence[Bar]) -> None:
    for bar in bars:
        b = ohlc.ohlc.add()
        b.interval, b.ts, b.vol = bar.interval, to_ms(bar.bar_start), bar.volume
        b.open, b.high, b.low, b.close = bar.open, bar.high, bar.low, bar.close
