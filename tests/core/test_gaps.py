"""The pure side of gap filling: minutes, request plans, candle answers, verdicts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from collector.core.gaps import (
    MAX_DAYS_PER_REQUEST,
    Answer,
    CandleRequest,
    gap_minutes,
    judge,
    parse_candles,
    plan_requests,
)
from collector.core.times import ist_day

T0 = datetime(2026, 11, 20, 4, 0, 30, tzinfo=UTC)  # 09:30:30 IST
TODAY = date(2026, 11, 20)


def test_gap_minutes_are_the_minutes_the_span_touches() -> None:
    assert gap_minutes(T0, T0 + timedelta(minutes=2)) == [
        datetime(2026, 11, 20, 4, m, tzinfo=UTC) for m in (0, 1, 2)
    ]
    whole = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    assert gap_minutes(whole, whole + timedelta(minutes=2)) == [whole, whole + timedelta(minutes=1)]
    assert gap_minutes(T0, T0) == []


def test_ist_day_is_upstox_day() -> None:
    assert ist_day(datetime(2026, 11, 20, 18, 29, tzinfo=UTC)) == date(2026, 11, 20)
    assert ist_day(datetime(2026, 11, 20, 18, 30, tzinfo=UTC)) == date(2026, 11, 21)


def test_paths_encode_the_key_and_order_to_before_from() -> None:
    assert CandleRequest("NSE_EQ|INE002A01018", "intraday").path == (
        "/v3/historical-candle/intraday/NSE_EQ%7CINE002A01018/minutes/1"
    )
    r = CandleRequest("NSE_INDEX|Nifty 50", "historical", date(2026, 1, 2), date(2026, 1, 20))
    assert r.path == "/v3/historical-candle/NSE_INDEX%7CNifty%2050/minutes/1/2026-01-20/2026-01-02"


def test_plan_one_intraday_request_for_today_and_month_windows_before() -> None:
    today_minutes = [T0, T0 + timedelta(hours=2)]
    old = [datetime(2026, 10, d, 5, 0, tzinfo=UTC) for d in (1, 2, 28, 29, 30)]
    plan = plan_requests({"NSE_FO|1": today_minutes + old, "NSE_FO|2": today_minutes}, TODAY)
    assert plan == [
        CandleRequest("NSE_FO|1", "intraday"),
        CandleRequest("NSE_FO|1", "historical", date(2026, 10, 1), date(2026, 10, 28)),
        CandleRequest("NSE_FO|1", "historical", date(2026, 10, 29), date(2026, 10, 30)),
        CandleRequest("NSE_FO|2", "intraday"),
    ]
    for r in plan:
        if r.kind == "historical":
            assert r.from_day and r.to_day and (r.to_day - r.from_day).days < MAX_DAYS_PER_REQUEST
    # Nothing before Upstox's history; nothing for no minutes.
    assert plan_requests({"NSE_FO|1": [datetime(2021, 5, 3, 5, tzinfo=UTC)], "NSE_FO|2": []}, TODAY) == []


def test_parse_candles() -> None:
    body = {
        "status": "success",
        "data": {
            "candles": [
                ["2026-11-20T09:31:00+05:30", 101.5, 102.0, 101.0, 101.75, 1200, 3400],
                ["2026-11-20T09:30:00+05:30", 100.0, 101.6, 99.5, 101.5, 800, 0],
            ]
        },
    }
    [newer, older] = parse_candles(body)
    assert newer.bucket == datetime(2026, 11, 20, 4, 1, tzinfo=UTC)
    assert (older.open, older.high, older.low, older.close, older.volume, older.oi) == (
        100,
        101.6,
        99.5,
        101.5,
        800,
        0,
    )
    assert parse_candles({"status": "success", "data": {"candles": []}}) == []
    for bad in (
        {"status": "error", "errors": []},
        {"status": "success", "data": {}},
        "<html>blocked</html>",
        {"status": "success", "data": {"candles": [["2026-11-20T09:30:00", 1, 1, 1, 1, 1, 0]]}},  # naive
        {"status": "success", "data": {"candles": [["2026-11-20T09:30:10+05:30", 1, 1, 1, 1, 1, 0]]}},
        {"status": "success", "data": {"candles": [["2026-11-20T09:30:00+05:30", "x", 1, 1, 1, 1, 0]]}},
    ):
        with pytest.raises(ValueError):
            parse_candles(bad)


def test_what_an_answer_proves_about_a_missing_minute() -> None:
    m = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    later = Answer({}, newest_intraday=m + timedelta(minutes=1))
    assert later.has_no_trades(m, TODAY)  # a later minute is published: none traded in this one
    assert not Answer({}, newest_intraday=m).has_no_trades(m, TODAY)
    assert not Answer({}).has_no_trades(m, TODAY)  # empty answer: maybe not published yet
    yesterday = m - timedelta(days=1)
    assert Answer({}, historical_days=frozenset({ist_day(yesterday)})).has_no_trades(yesterday, TODAY)
    assert not Answer({}, newest_intraday=m + timedelta(hours=1)).has_no_trades(yesterday, TODAY)


def verdict(**kw: object) -> tuple[str, str]:
    args: dict[str, object] = dict(
        expected=10, filled=10, no_trades=0, refused={}, refused_minutes=0, too_old=0, waiting=0,
        unresolved=0, attempts=1, max_attempts=3, not_fetched=0, transient=None,
    )  # fmt: skip
    args.update(kw)
    v = judge(**args)  # type: ignore[arg-type]
    return v.status, v.detail


def test_verdicts() -> None:
    assert verdict()[0] == "filled"
    assert verdict(expected=0, filled=0) == ("filled", "nothing missing: every minute of the gap has ticks")
    assert verdict(filled=7, no_trades=3)[0] == "filled"
    status, detail = verdict(
        filled=0, refused={"NSE_FO|9": "candles answered 400: bad key"}, refused_minutes=10
    )
    assert status == "unfillable" and "NSE_FO|9" in detail and "400" in detail
    assert verdict(filled=6, refused={"NSE_FO|9": "x"}, refused_minutes=4)[0] == "partial"
    # Still to come: minutes not over, instruments not fetched, answers lacking minutes.
    assert verdict(filled=5, waiting=2)[0] == "pending"
    status, detail = verdict(filled=5, not_fetched=2, transient="candles answered 503")
    assert status == "pending" and "503" in detail
    assert verdict(filled=5, unresolved=5, attempts=2)[0] == "pending"
    status, detail = verdict(filled=5, unresolved=5, attempts=3)
    assert status == "partial" and "after 3 attempts" in detail
    assert verdict(filled=0, unresolved=10, attempts=3)[0] == "unfillable"
    status, detail = verdict(filled=0, too_old=10)
    assert status == "unfillable" and "history" in detail
