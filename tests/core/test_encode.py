"""Encoding recorded ticks back into frames, the replay's clock and the span of --from/--to. No I/O."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest

from collector.core.decode import decode_frame
from collector.core.encode import batches, join, market_info, served_kind, tick_entry, to_ms
from collector.core.records import Bar, Tick
from collector.core.span import SpanError, day_bounds, parse_instant, parse_span
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.replay.clock import ReplayClock, parse_speed
from collector.simulator.market import SimMarket, generate_master

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def recorded_ticks() -> list[tuple[Tick, list[Bar]]]:
    """Ticks of every kind as the decoder makes them from the simulator's frames, with their bars."""
    market = SimMarket(generate_master(10), seed=3)
    now_ms = int(time.time() * 1000)
    out = []
    for i, mode in enumerate(("ltpc", "full", "option_greeks", "full_d30")):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now_ms + i)
        for key in market.instruments:
            market.fill(msg.feeds[key], market.tick(key, now_ms + i), mode)  # type: ignore[arg-type]
        frame = decode_frame(msg.SerializeToString(), NOW)
        for t in frame.ticks:
            out.append((t, [b for b in frame.bars if b.instrument_key == t.instrument_key]))
    return out


def test_a_recorded_tick_decodes_back_to_itself_in_its_own_mode() -> None:
    ticks = recorded_ticks()
    assert {t.kind for t, _ in ticks} == {"ltpc", "full", "option_greeks", "full_d30", "index"}
    for tick, bars in ticks:
        mode = "full" if tick.kind == "index" else tick.kind
        frame = decode_frame(join("live_feed", to_ms(tick.feed_time), [tick_entry(tick, mode, bars)]), NOW)  # type: ignore[arg-type]
        assert frame.ticks == [tick] and frame.bars == bars


def test_iep_and_empty_depth_come_back() -> None:
    tick, _ = next((t, b) for t, b in recorded_ticks() if t.kind == "full")
    for iep in (0.0, 101.5):
        pre_open = tick._replace(iep=iep)
        [back] = decode_frame(join("live_feed", 1, [tick_entry(pre_open, "full")]), NOW).ticks
        assert back.iep == iep
    no_depth = tick._replace(bid_prices=[], bid_qtys=[], ask_prices=[], ask_qtys=[], bid_price=None,
                             bid_qty=None, ask_price=None, ask_qty=None)  # fmt: skip
    [back] = decode_frame(join("live_feed", to_ms(tick.feed_time), [tick_entry(no_depth, "full")]), NOW).ticks
    assert back == no_depth


@pytest.mark.parametrize(
    ("kind", "asked", "served"),
    [
        ("ltpc", "full", "ltpc"),  # never invented: served as recorded
        ("option_greeks", "full", "option_greeks"),
        ("full", "full_d30", "full"),
        ("index", "full_d30", "index"),
        ("full", "ltpc", "ltpc"),  # asked for less: the part that mode carries
        ("full", "option_greeks", "option_greeks"),
        ("full_d30", "full", "full"),
        ("index", "option_greeks", "option_greeks"),
        ("index", "ltpc", "ltpc"),
    ],
)
def test_what_a_mode_is_served_as(kind: str, asked: str, served: str) -> None:
    assert served_kind(kind, asked) == served  # type: ignore[arg-type]


def test_a_poorer_mode_gets_its_part_of_the_recorded_payload() -> None:
    ticks = dict((t.kind, t) for t, _ in recorded_ticks())
    d30 = ticks["full_d30"]
    [full] = decode_frame(join("live_feed", 1, [tick_entry(d30, "full")]), NOW).ticks
    assert full.kind == "full" and full.bid_prices == d30.bid_prices[:5] and full.ask_qtys == d30.ask_qtys[:5]  # type: ignore[index]
    [og] = decode_frame(join("live_feed", 1, [tick_entry(d30, "option_greeks")]), NOW).ticks
    assert og.kind == "option_greeks"
    assert (og.bid_price, og.bid_qty, og.ask_price, og.ask_qty) == (
        d30.bid_price,
        d30.bid_qty,
        d30.ask_price,
        d30.ask_qty,
    )
    assert (og.vtt, og.oi, og.iv, og.delta) == (d30.vtt, d30.oi, d30.iv, d30.delta)
    [ltpc] = decode_frame(join("live_feed", 1, [tick_entry(d30, "ltpc")]), NOW).ticks
    assert (ltpc.kind, ltpc.ltp, ltpc.time, ltpc.ltq, ltpc.cp) == ("ltpc", d30.ltp, d30.time, d30.ltq, d30.cp)
    assert ltpc.vtt is None and ltpc.bid_prices is None


def test_frames_keep_their_kind_bytes_and_split_on_a_repeated_key() -> None:
    entries = [("a", b"\x12\x00"), ("b", b"\x12\x00"), ("a", b"\x12\x00"), ("c", b"\x12\x00")]
    assert [len(f) for f in batches(entries)] == [2, 2]
    assert join("live_feed", 5, []).startswith(b"\x08\x01")  # the feed process tells kinds by these
    assert join("initial_feed", 5, []) == pb.FeedResponse(currentTs=5).SerializeToString()
    empty = decode_frame(market_info(5, {}), NOW)
    assert empty.kind == "market_info" and empty.statuses == []
    info = decode_frame(market_info(5, {"NSE_FO": pb.NORMAL_CLOSE}, pre_open={"NSE_EQ": ("x", 3)}), NOW)
    assert {(s.segment, s.session, s.status) for s in info.statuses} == {
        ("NSE_FO", "normal", "NORMAL_CLOSE"), ("NSE_EQ", "pre_open", "x"),
    }  # fmt: skip
    assert to_ms(datetime(1970, 1, 1, 0, 0, 0, 1999, tzinfo=UTC)) == 1  # rounded down, as the wire has it


def test_the_span_reads_ist_and_utc() -> None:
    ist_open = datetime(2026, 11, 27, 3, 45, tzinfo=UTC)
    assert parse_instant("2026-11-27T09:15") == ist_open
    assert parse_instant("2026-11-27 09:15:00") == ist_open
    assert parse_instant("2026-11-27T09:15+05:30") == ist_open
    assert parse_instant("2026-11-27T03:45Z") == ist_open
    assert parse_instant("2026-11-27T03:45:00+00:00") == ist_open
    assert parse_instant("2026-11-27") == datetime(2026, 11, 26, 18, 30, tzinfo=UTC)
    assert day_bounds(date(2026, 11, 27)) == (
        datetime(2026, 11, 26, 18, 30, tzinfo=UTC), datetime(2026, 11, 27, 18, 30, tzinfo=UTC),
    )  # fmt: skip
    with pytest.raises(SpanError, match="is not after"):
        parse_span("2026-11-27T10:00", "2026-11-27T04:30Z")  # the same instant
    with pytest.raises(SpanError, match="is not YYYY-MM-DD"):
        parse_instant("yesterday", "--from")


def test_the_clock() -> None:
    start = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
    clock = ReplayClock(start, start + timedelta(minutes=10), 10.0)
    clock.begin(100.0)
    assert clock.due(start + timedelta(seconds=30)) == 103.0
    assert clock.position(101.0) == start + timedelta(seconds=10)
    assert clock.position(1000.0) == start + timedelta(minutes=10)  # never past the end
    fastest = ReplayClock(start, start + timedelta(minutes=10), None)
    fastest.begin(0.0)
    assert fastest.due(start + timedelta(minutes=5)) is None
    fastest.sent(start + timedelta(minutes=5))
    assert fastest.position(0.0) == start + timedelta(minutes=5)
    assert parse_speed("max") is None and parse_speed("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "fast"):
        with pytest.raises(ValueError):
            parse_speed(bad)
