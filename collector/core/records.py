"""Typed records that flow from the decoder to the database.

``Tick`` is a named tuple whose fields are the ``ticks`` table's columns in
order, so the writer hands ticks to COPY without converting them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

Mode = Literal["ltpc", "full", "option_greeks", "full_d30"]
MODES: tuple[Mode, ...] = ("ltpc", "option_greeks", "full", "full_d30")

# What a tick's payload was; "index" is the full-mode payload of an index.
TickKind = Literal["ltpc", "option_greeks", "full", "full_d30", "index"]
TICK_KINDS: tuple[TickKind, ...] = ("ltpc", "option_greeks", "full", "full_d30", "index")

FrameKind = Literal["initial_feed", "live_feed", "market_info"]
FRAME_KINDS: tuple[FrameKind, ...] = ("initial_feed", "live_feed", "market_info")


class Tick(NamedTuple):
    """One instrument's update from one frame: a row of ``ticks``."""

    time: datetime  # last trade time; the frame time when the feed has none
    instrument_key: str
    kind: str
    snapshot: bool  # from an initial_feed frame
    feed_time: datetime  # server send time of the frame (currentTs)
    received_at: datetime
    ltp: float
    ltq: int | None
    cp: float | None
    volume: int | None  # increase of vtt since this instrument's previous tick
    vtt: int | None
    oi: float | None
    iv: float | None
    atp: float | None
    tbq: float | None
    tsq: float | None
    bid_price: float | None
    bid_qty: int | None
    ask_price: float | None
    ask_qty: int | None
    delta: float | None
    theta: float | None
    gamma: float | None
    vega: float | None
    rho: float | None
    iep: float | None
    bid_prices: list[float] | None
    bid_qtys: list[int] | None
    ask_prices: list[float] | None
    ask_qtys: list[int] | None


TICK_COLUMNS: tuple[str, ...] = Tick._fields


class TickRow(NamedTuple):
    """A tick as the writer handles it: what the sequencer needs, and the row's bytes.

    ``head`` and ``tail`` are the tick's row of ``ticks`` in the binary COPY
    format (:mod:`collector.core.pgcopy`), before and after the ``volume`` column,
    which the sequencer fills in.
    """

    instrument_key: str
    kind: str
    time_us: int  # microseconds since the Unix epoch
    ltp: float
    vtt: int | None
    ltq: int | None
    snapshot: bool
    head: bytes
    tail: bytes


class Bar(NamedTuple):
    """An OHLC bar computed by the exchange (``I1``, ``I30``, ``1d``)."""

    instrument_key: str
    interval: str
    bar_start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    updated_at: datetime


BAR_COLUMNS: tuple[str, ...] = Bar._fields


class BarRow(NamedTuple):
    """A bar as the writer handles it: which bar it is, and its row of ``exchange_bars``
    in the binary COPY format (:mod:`collector.core.pgcopy`)."""

    bar: tuple[str, str, int]  # instrument key, interval, bar start (epoch ms)
    row: bytes


class StatusChange(NamedTuple):
    """A segment's market status as reported in a ``market_info`` frame.

    ``session`` is "normal" for ``segmentStatus`` (status is a ``MarketStatus``
    name such as NORMAL_OPEN), "pre_open" or "cas" (closing auction) for the
    newer per-session maps, whose status is Upstox's own string.
    """

    segment: str
    session: str
    status: str
    time: datetime
    received_at: datetime


@dataclass(slots=True)
class Frame:
    """Everything decoded from one binary frame."""

    kind: FrameKind
    feed_time: datetime
    ticks: list[Tick] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    statuses: list[StatusChange] = field(default_factory=list)


class FeedSession(NamedTuple):
    """One connection's life, from subscribed to closed: a row of ``feed_sessions``."""

    connection: int
    connected_at: datetime
    disconnected_at: datetime
    close_reason: str


class Gap(NamedTuple):
    """A span during which a connection was down while its segments were open.

    ``instruments`` are the keys the connection carried: the ones whose data
    may be missing, and whose candles the backfill fetches.
    """

    connection: int
    started_at: datetime
    ended_at: datetime
    segments: list[str]
    reason: str
    instruments: list[str] = []  # noqa: RUF012 - NamedTuple defaults are never mutated
