"""The decoder against byte fixtures built from the protocol's field numbers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.core.decode import decode_frame, epoch_ms
from collector.exceptions import DecodeError
from tests.support.wire import (
    LTT,
    MARKET_INFO,
    NOW,
    TS,
    entry,
    f64,
    frame,
    full_market,
    greeks,
    ltpc,
    msg,
    ohlc,
    quote,
    text,
    vint,
)


def test_ltpc_live_frame() -> None:
    data = frame(entry(2, "NSE_EQ|INE002A01018", msg(1, ltpc(2900.5, LTT, 10, 2890.25))))
    f = decode_frame(data, NOW)
    assert f.kind == "live_feed"
    assert f.feed_time == epoch_ms(TS, "t")
    [t] = f.ticks
    assert t.instrument_key == "NSE_EQ|INE002A01018"
    assert t.kind == "ltpc" and t.snapshot is False
    assert t.time == datetime(2026, 11, 24, 5, 59, 59, 456000, tzinfo=UTC)
    # ltq is field 3 and cp field 4 since Feb 2025; older code read cp from 3.
    assert (t.ltp, t.ltq, t.cp) == (2900.5, 10, 2890.25)
    assert t.received_at == NOW
    assert t.vtt is None and t.bid_prices is None and t.iep is None


def test_initial_feed_has_no_type_field() -> None:
    data = frame(entry(2, "NSE_FO|45450", msg(1, ltpc(101.0, LTT, 1, 99.0))), type_=None)
    f = decode_frame(data, NOW)
    assert f.kind == "initial_feed"
    assert f.ticks[0].snapshot is True


def test_proto3_defaults_read_as_zero() -> None:
    data = frame(entry(2, "NSE_FO|1", msg(1, f64(1, 5.0))))  # only ltp present
    [t] = decode_frame(data, NOW).ticks
    assert (t.ltq, t.cp) == (0, 0.0)
    assert t.time == epoch_ms(TS, "t")  # no trade time: the frame's time


def test_iep_wrapper_distinguishes_absent_from_zero() -> None:
    with_iep = ltpc(10.0, LTT, 1, 9.0) + msg(5, f64(1, 0.0))
    [t] = decode_frame(frame(entry(2, "NSE_EQ|X", msg(1, with_iep))), NOW).ticks
    assert t.iep == 0.0


def test_full_market_feed() -> None:
    f = decode_frame(frame(entry(2, "NSE_FO|36708", full_market(5, 1))), NOW)
    [t] = f.ticks
    assert t.kind == "full"
    assert (t.vtt, t.oi, t.iv, t.atp, t.tbq, t.tsq) == (123_456, 5000.0, 0.18, 99.7, 1e5, 2e5)
    assert t.bid_prices == [99.5, 98.5, 97.5, 96.5, 95.5]
    assert t.ask_qtys == [200, 201, 202, 203, 204]
    assert (t.bid_price, t.bid_qty, t.ask_price, t.ask_qty) == (99.5, 100, 100.5, 200)
    assert (t.delta, t.theta, t.gamma, t.vega, t.rho) == (0.5, -3.0, 0.01, 12.0, 1.5)
    bars = {b.interval: b for b in f.bars}
    assert bars["I1"].bar_start == epoch_ms(1_795_499_940_000, "t")
    assert (bars["I1"].open, bars["I1"].high, bars["I1"].low, bars["I1"].close) == (99, 101, 98, 100)
    assert bars["1d"].volume == 90_000


def test_full_d30() -> None:
    [t] = decode_frame(frame(entry(2, "NSE_FO|1", full_market(30, 3))), NOW).ticks
    assert t.kind == "full_d30" and len(t.bid_prices or []) == 30


def test_index_feed() -> None:
    index = msg(1, ltpc(24000.5, LTT, 0, 23900.0)) + msg(
        2, msg(1, ohlc("I30", 23950, 24010, 23940, 24000.5, 0, 1_795_498_200_000))
    )
    f = decode_frame(frame(entry(2, "NSE_INDEX|Nifty 50", msg(2, msg(2, index)))), NOW)
    [t] = f.ticks
    assert t.kind == "index" and t.ltp == 24000.5 and t.vtt is None
    assert [b.interval for b in f.bars] == ["I30"]


def test_option_greeks() -> None:
    flg = (
        msg(1, ltpc(150.0, LTT, 75, 140.0)) + msg(2, quote(750, 149.9, 1500, 150.1))
        + msg(3, greeks(0.45, -5.0, 0.002, 9.0, 0.8)) + vint(4, 9000) + f64(5, 120000.0) + f64(6, 0.21)
    )  # fmt: skip
    [t] = decode_frame(frame(entry(2, "NSE_FO|45450", msg(3, flg) + vint(4, 2))), NOW).ticks
    assert t.kind == "option_greeks"
    assert (t.bid_price, t.bid_qty, t.ask_price, t.ask_qty) == (149.9, 750, 150.1, 1500)
    assert (t.vtt, t.oi, t.iv, t.delta) == (9000, 120000.0, 0.21, 0.45)
    assert t.bid_prices is None


def test_market_info() -> None:
    info = (
        msg(1, text(1, "NSE_FO"), vint(2, 2))  # NORMAL_OPEN
        + msg(1, text(1, "MCX_FO"), vint(2, 3))  # NORMAL_CLOSE
        + msg(3, text(1, "NSE_FO"), msg(2, text(1, "PRE_OPEN_END"), vint(2, TS - 1000)))
    )
    f = decode_frame(frame(msg(4, info), type_=MARKET_INFO), NOW)
    assert f.kind == "market_info" and not f.ticks
    got = {(s.segment, s.session): s.status for s in f.statuses}
    assert got == {
        ("NSE_FO", "normal"): "NORMAL_OPEN",
        ("MCX_FO", "normal"): "NORMAL_CLOSE",
        ("NSE_FO", "pre_open"): "PRE_OPEN_END",
    }
    pre = next(s for s in f.statuses if s.session == "pre_open")
    assert pre.time == epoch_ms(TS - 1000, "t")


def test_unknown_fields_are_tolerated() -> None:
    future_ltpc = ltpc(10.0, LTT, 1, 9.0) + vint(42, 7) + msg(43, b"\x01\x02")
    data = frame(entry(2, "NSE_EQ|X", msg(1, future_ltpc) + vint(9, 1))) + vint(99, 5) + msg(100, b"xyz")
    [t] = decode_frame(data, NOW).ticks
    assert (t.ltp, t.ltq, t.cp) == (10.0, 1, 9.0)


def test_several_instruments_in_one_frame() -> None:
    feeds = b"".join(entry(2, f"NSE_FO|{i}", msg(1, ltpc(i, LTT + i, 1, 1.0))) for i in range(1, 101))
    assert len(decode_frame(frame(feeds), NOW).ticks) == 100


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff",  # truncated varint
        frame(entry(2, "NSE_EQ|X", msg(1, ltpc(1.0, LTT, 1, 1.0))))[:-3] + b"\x12\x50",  # length overruns
        frame(entry(2, "NSE_EQ|X", msg(1, ltpc(1.0, 2**62, 1, 1.0)))),  # trade time beyond year 9999
        frame(entry(2, "NSE_EQ|X", msg(1, ltpc(1.0, -5, 1, 1.0)))),  # negative trade time
        frame(type_=7),  # a frame type the protocol does not define
        frame(entry(2, "", msg(1, ltpc(1.0, LTT, 1, 1.0)))),  # empty instrument key
        b"\x0b",  # start-group wire type
    ],
)
def test_malformed_frames_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_frame(data, NOW)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)
