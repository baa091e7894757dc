"""Our binary COPY (collector/core/pgcopy.py, and the decoder's rows) against asyncpg's own encoding.

Every test writes the same rows twice into twin tables shaped like ``ticks``
(or ``exchange_bars``) on a real TimescaleDB, once as our bytes through
``copy_to_table(format='binary')`` and once as records through asyncpg's
``copy_records_to_table``, reads both back in order and compares every column,
floats bit for bit (NaN, -0.0 and the infinities included):

- generated rows, property-based: NULL in every nullable column, NaN and the
  infinities, empty and 30-level arrays (with NULL elements), non-ASCII text,
  and times at the very edges of what a datetime holds;
- generated frames, property-based, through the writer's path (the decoder's
  rows, then the sequencer), against the decoder as it was before
  (tests/support/reference_decode.py) and asyncpg: edge values in every field;
- a generated trading day of the simulator's market in every mode.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.core.decode import decode_rows
from collector.core.pgcopy import (
    HEADER,
    TICK_TYPES,
    TRAILER,
    CopyEncodeError,
    encode_rows,
    tick_row,
)
from collector.core.records import BAR_COLUMNS, TICK_COLUMNS, Bar, Tick
from collector.core.sequencer import TickSequencer
from collector.core.times import EPOCH, IST_OFFSET, MAX_EPOCH_MS
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.market import SimMarket, generate_master
from tests.support import reference_decode
from tests.support.db import connection

# -- comparing ----------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, floats by their bits (so NaN equals NaN and -0.0 differs from 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)


async def twins(
    dsn: str, table: str, columns: Sequence[str], ours: bytes, theirs: Sequence[Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Our stream and asyncpg's records copied into twin tables like ``table``; both read back in order."""
    async with connection(dsn) as conn:
        for name in ("ours", "theirs"):
            await conn.execute(
                f"CREATE TEMPORARY TABLE {name} (n bigint GENERATED ALWAYS AS IDENTITY, LIKE {table})"
            )
        await conn.copy_to_table("ours", source=memoryview(ours), columns=list(columns), format="binary")
        await conn.copy_records_to_table("theirs", records=theirs, columns=list(columns))
        cols = ", ".join(columns)
        got = [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM ours ORDER BY n")]
        want = [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM theirs ORDER BY n")]
        return got, want


def assert_same_rows(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], columns: Sequence[str]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for name, x, y in zip(columns, g, w, strict=True):
            if y in (datetime.min, datetime.max) and isinstance(x, datetime):
                # asyncpg writes datetime.min and .max as -infinity and infinity (and reads
                # them back naive); we write the instant itself. The decoder never makes
                # either (ticks end at 9999-12-31 23:59:59.999), and the rows test below
                # holds ours to the value written.
                assert x.replace(tzinfo=None) == y, f"row {i}, column {name}: {x!r}"
                continue
            assert same(x, y), f"row {i}, column {name}: ours {x!r}, asyncpg's {y!r}"


# -- generated rows -----------------------------------------------------------------------

FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
times = st.datetimes(
    min_value=FIRST.replace(tzinfo=None), max_value=LAST.replace(tzinfo=None), timezones=st.just(UTC)
)
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
floats = st.floats(allow_nan=True, allow_infinity=True)
int8s = st.integers(-(2**63), 2**63 - 1)
depth = st.one_of(st.just(0), st.just(5), st.just(30), st.integers(0, 31))


def arrays(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any] | None]:
    values = depth.flatmap(
        lambda n: st.lists(st.one_of(element, element, element, st.none()), min_size=n, max_size=n)
    )
    return st.none() | values


ticks = st.builds(
    Tick,
    time=times, instrument_key=texts, kind=texts, snapshot=st.booleans(), feed_time=times, received_at=times,
    ltp=floats, ltq=st.none() | int8s, cp=st.none() | floats, volume=st.none() | int8s, vtt=st.none() | int8s,
    oi=st.none() | floats, iv=st.none() | floats, atp=st.none() | floats, tbq=st.none() | floats,
    tsq=st.none() | floats, bid_price=st.none() | floats, bid_qty=st.none() | int8s,
    ask_price=st.none() | floats, ask_qty=st.none() | int8s, delta=st.none() | floats,
    theta=st.none() | floats, gamma=st.none() | floats, vega=st.none() | floats, rho=st.none() | floats,
    iep=st.none() | floats, bid_prices=arrays(floats), bid_qtys=arrays(int8s), ask_prices=arrays(floats),
    ask_qtys=arrays(int8s),
)  # fmt: skip
EDGE = Tick(
    FIRST, "NSE_FO|ए", "full_d30", True, LAST, EPOCH, float("nan"), -(2**63), float("-inf"), 2**63 - 1, None,
    float("inf"), -0.0, 5e-324, None, None, None, None, None, None, None, None, None, None, None, None,
    [], [1, None, -(2**63)], [float("nan")] * 30, None,
)  # fmt: skip
ROWS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@ROWS
@given(rows=st.lists(ticks, min_size=1, max_size=20))
@example(rows=[EDGE])
def test_generated_ticks_read_back_as_asyncpgs_encoding_of_them(migrated: str, rows: list[Tick]) -> None:
    got, want = asyncio.run(twins(migrated, "ticks", TICK_COLUMNS, encode_rows(TICK_TYPES, rows), rows))
    assert_same_rows(got, want, TICK_COLUMNS)
    assert_same_rows(got, [tuple(r) for r in rows], TICK_COLUMNS)  # and both are what was written


def test_values_a_column_cannot_hold_are_refused_with_the_reason() -> None:
    good = EDGE
    for name, value in (
        ("time", datetime(2026, 1, 1)),  # naive
        ("ltq", 2**63),
        ("ltp", "1.5"),
        ("snapshot", 1),
        ("instrument_key", "\ud800"),  # a lone surrogate is not UTF-8
        ("bid_qtys", [1.5]),
    ):
        with pytest.raises(CopyEncodeError):
            tick_row(good._replace(**{name: value}))


# -- generated frames, through the writer's path ------------------------------------------

ms = st.integers(0, MAX_EPOCH_MS)
keys = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    msg = pb.FeedResponse(type=draw(st.sampled_from([pb.initial_feed, pb.live_feed])), currentTs=draw(ms))

    def ltpc(target: pb.LTPC) -> None:
        target.ltp, target.ltt, target.ltq, target.cp = draw(floats), draw(ms), draw(int8s), draw(floats)
        if draw(st.booleans()):
            target.iep.value = draw(floats)

    def bars(target: pb.MarketOHLC) -> None:
        for _ in range(draw(st.integers(0, 3))):
            target.ohlc.add(
                interval=draw(st.sampled_from(["I1", "1d", "I30", ""])), open=draw(floats), high=draw(floats),
                low=draw(floats), close=draw(floats), vol=draw(int8s), ts=draw(st.sampled_from([0, 1, MAX_EPOCH_MS]) | ms),
            )  # fmt: skip

    for key in draw(st.lists(keys, min_size=1, max_size=6, unique=True)):
        feed = msg.feeds[key]
        kind = draw(st.sampled_from(["ltpc", "full", "index", "greeks"]))
        if kind == "ltpc":
            ltpc(feed.ltpc)
        elif kind == "index":
            ltpc(feed.fullFeed.indexFF.ltpc)
            bars(feed.fullFeed.indexFF.marketOHLC)
        elif kind == "greeks":
            flg = feed.firstLevelWithGreeks
            ltpc(flg.ltpc)
            flg.firstDepth.bidQ, flg.firstDepth.bidP = draw(int8s), draw(floats)
            flg.firstDepth.askQ, flg.firstDepth.askP = draw(int8s), draw(floats)
            g = flg.optionGreeks
            g.delta, g.theta, g.gamma, g.vega, g.rho = (draw(floats) for _ in range(5))
            flg.vtt, flg.oi, flg.iv = draw(int8s), draw(floats), draw(floats)
        else:
            mff = feed.fullFeed.marketFF
            ltpc(mff.ltpc)
            for _ in range(draw(depth)):
                mff.marketLevel.bidAskQuote.add(
                    bidQ=draw(int8s), bidP=draw(floats), askQ=draw(int8s), askP=draw(floats)
                )
            g = mff.optionGreeks
            g.delta, g.theta, g.gamma, g.vega, g.rho = (draw(floats) for _ in range(5))
            mff.atp, mff.vtt, mff.oi, mff.iv, mff.tbq, mff.tsq = (
                draw(floats), draw(int8s), draw(floats), draw(floats), draw(floats), draw(floats),
            )  # fmt: skip
            mff.iep = draw(st.sampled_from([0.0]) | floats)
            bars(mff.marketOHLC)
            feed.requestMode = draw(st.sampled_from([pb.full_d5, pb.full_d30]))
    return msg.SerializeToString()


def writer_rows(data: list[bytes], received: datetime) -> tuple[bytes, bytes]:
    """The ticks and the bars of ``frames`` as a writer streams them (decoder, sequencer)."""
    sequencer = TickSequencer()
    received_us = (received - EPOCH) // timedelta(microseconds=1)
    ticks_out, bars_out = [], []
    for frame in data:
        rows = decode_rows(frame, received_us)
        ticks_out += sequencer.rows(rows.ticks)[0]
        bars_out += [b.row for b in rows.bars]
    return b"".join((HEADER, *ticks_out, TRAILER)), b"".join((HEADER, *bars_out, TRAILER))


def reference_rows(data: list[bytes], received: datetime) -> tuple[list[Tick], list[Bar]]:
    """The same frames through the decoder as it was, for asyncpg to encode."""
    sequencer = TickSequencer()
    ticks_out: list[Tick] = []
    bars_out: list[Bar] = []
    for frame in data:
        decoded = reference_decode.decode_frame(frame, received)
        ticks_out += sequencer.process(decoded.ticks)
        bars_out += decoded.bars
    return ticks_out, bars_out


async def compare_paths(dsn: str, data: list[bytes], received: datetime) -> int:
    our_ticks, our_bars = writer_rows(data, received)
    their_ticks, their_bars = reference_rows(data, received)
    got, want = await twins(dsn, "ticks", TICK_COLUMNS, our_ticks, their_ticks)
    assert_same_rows(got, want, TICK_COLUMNS)
    got, want = await twins(dsn, "exchange_bars", BAR_COLUMNS, our_bars, their_bars)
    assert_same_rows(got, want, BAR_COLUMNS)
    return len(their_ticks)


@ROWS
@given(data=st.lists(frames(), min_size=1, max_size=4))
def test_generated_frames_store_as_the_reference_decoder_and_asyncpg_store_them(
    migrated: str, data: list[bytes]
) -> None:
    asyncio.run(compare_paths(migrated, data, datetime(2026, 11, 30, 4, 0, 0, 123_456, tzinfo=UTC)))


def test_a_generated_trading_day_stores_as_the_reference_decoder_and_asyncpg_store_it(migrated: str) -> None:
    day = date(2026, 11, 20)
    market = SimMarket(generate_master(10, today=day), seed=19)
    open_ms = int((datetime(2026, 11, 20, 9, 15, tzinfo=UTC) - IST_OFFSET - EPOCH).total_seconds() * 1000)
    keys = list(market.instruments)
    modes = ["ltpc", "full", "option_greeks", "full_d30"]
    data = []
    for minute in range(0, 376, 3):  # 09:15 to 15:30 IST
        now_ms = open_ms + minute * 60_000
        msg = pb.FeedResponse(type=pb.initial_feed if minute == 0 else pb.live_feed, currentTs=now_ms)
        for j, key in enumerate(keys):
            market.fill(msg.feeds[key], market.tick(key, now_ms), modes[j % 4])  # type: ignore[arg-type]
        data.append(msg.SerializeToString())
    stored = asyncio.run(compare_paths(migrated, data, EPOCH + timedelta(milliseconds=open_ms)))
    assert stored > 5_000


def test_a_book_deeper_than_the_generated_encoders_stores_alike(migrated: str) -> None:
    msg = pb.FeedResponse(type=pb.live_feed, currentTs=1_795_500_000_000)
    for levels, key in ((70, "NSE_FO|70"), (65, "NSE_FO|65")):
        mff = msg.feeds[key].fullFeed.marketFF
        mff.ltpc.ltp, mff.ltpc.ltt, mff.vtt = 101.5, 1_795_499_999_000, 1_000
        for i in range(levels):
            mff.marketLevel.bidAskQuote.add(bidQ=i, bidP=100.0 - i / 100, askQ=2 * i, askP=101.0 + i / 100)
    mff.iep = 101.25  # one with iep, one without
    stored = asyncio.run(
        compare_paths(migrated, [msg.SerializeToString()], datetime(2026, 11, 30, tzinfo=UTC))
    )
    assert stored == 2
