"""When markets are open: hours per exchange, weekends, holidays, special sessions, spans across midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from collector.core.calendar import (
    DEFAULT_HOURS,
    EXCHANGE_OF_SEGMENT,
    SEGMENTS,
    Calendar,
    Holiday,
    Hours,
    parse_holidays,
    parse_hours,
)

FRIDAY = date(2026, 11, 20)
SATURDAY = FRIDAY + timedelta(days=1)
MONDAY = FRIDAY + timedelta(days=3)


def utc(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), UTC)


# -- hours ----------------------------------------------------------------------------------


def test_a_weekday_session_is_its_ist_hours_in_utc() -> None:
    cal = Calendar()
    assert cal.sessions("NSE", FRIDAY) == [(utc(FRIDAY, 3, 45), utc(FRIDAY, 10, 0))]  # 09:15-15:30 IST
    assert cal.sessions("CDS", FRIDAY) == [(utc(FRIDAY, 3, 30), utc(FRIDAY, 11, 30))]  # 09:00-17:00 IST
    assert cal.sessions("MCX", FRIDAY) == [(utc(FRIDAY, 3, 30), utc(FRIDAY, 18, 25))]  # 09:00-23:55 IST


def test_weekends_have_no_session() -> None:
    cal = Calendar()
    assert cal.sessions("NSE", SATURDAY) == [] and cal.sessions("MCX", SATURDAY + timedelta(days=1)) == []


def test_an_exchange_without_hours_has_no_session() -> None:
    assert Calendar().sessions("XYZ", FRIDAY) == []


def test_every_segment_has_an_exchange_with_hours() -> None:
    assert set(SEGMENTS) == set(EXCHANGE_OF_SEGMENT)
    assert {EXCHANGE_OF_SEGMENT[s] for s in SEGMENTS} <= set(DEFAULT_HOURS)


def test_hours_from_json_merge_with_the_defaults() -> None:
    hours = parse_hours(
        {"*": {"open": "10:00", "close": "11:00"}, "MCX": {"open": "17:00", "close": "24:00"}}
    )
    assert hours["NSE"] == Hours(time(10), time(11)) == hours["CDS"]  # "*": every exchange
    assert hours["MCX"] == Hours(time(17), None)  # a named one wins over "*"; 24:00 is midnight
    assert parse_hours({"NSE": {"days": [5]}})["NSE"] == Hours(time(9, 15), time(15, 30), frozenset({5}))
    assert parse_hours({})["BSE"] == DEFAULT_HOURS["BSE"]  # not named: the default


@pytest.mark.parametrize(
    "spec",
    [
        {"NSE": "09:15-15:30"},
        {"NSE": {"open": "9.15"}},
        {"NSE": {"open": "24:00"}},
        {"NSE": {"close": "25:00"}},
        {"NSE": {"days": [7]}},
        {"NSE": {"days": "weekdays"}},
    ],
)
def test_hours_that_are_not_hours_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_hours(spec)


# -- holidays and special sessions ----------------------------------------------------------


def test_a_holiday_closes_the_exchanges_it_names_only() -> None:
    cal = Calendar(holidays=[Holiday(FRIDAY, frozenset({"NSE", "NFO"}))])
    assert cal.sessions("NSE", FRIDAY) == [] and cal.sessions("NFO", FRIDAY) == []
    assert cal.sessions("MCX", FRIDAY) == Calendar().sessions("MCX", FRIDAY)
    assert cal.sessions("NSE", MONDAY) == Calendar().sessions("NSE", MONDAY)


def test_a_special_session_replaces_the_day() -> None:
    muhurat = (utc(FRIDAY, 12, 30), utc(FRIDAY, 13, 30))  # 18:00-19:00 IST
    cal = Calendar(holidays=[Holiday(FRIDAY, frozenset({"NSE", "MCX"}), (("NSE", *muhurat),), "Diwali")])
    assert cal.sessions("NSE", FRIDAY) == [muhurat]
    assert cal.sessions("MCX", FRIDAY) == []


def test_a_special_session_can_fall_on_a_weekend() -> None:
    budget = (utc(SATURDAY, 3, 45), utc(SATURDAY, 10, 0))
    cal = Calendar(holidays=[Holiday(SATURDAY, frozenset(), (("NSE", *budget),), "Budget")])
    assert cal.sessions("NSE", SATURDAY) == [budget] and cal.sessions("BSE", SATURDAY) == []


def test_holidays_from_upstox_and_back() -> None:
    body = {
        "status": "success",
        "data": [
            {"date": "2026-11-08", "description": "Diwali", "holiday_type": "TRADING_HOLIDAY",
             "closed_exchanges": ["NSE", "BSE"],
             "open_exchanges": [{"exchange": "NSE", "start_time": 1794229200000, "end_time": 1794232800000}]},
            {"date": "2026-01-26", "description": "Republic Day", "closed_exchanges": ["NSE"]},
        ],
    }  # fmt: skip
    holidays = parse_holidays(body)
    diwali = holidays[0]
    assert diwali.day == date(2026, 11, 8) and diwali.closed == {"NSE", "BSE"}
    assert diwali.special == (
        ("NSE", datetime.fromtimestamp(1794229200, UTC), datetime.fromtimestamp(1794232800, UTC)),
    )
    cal = Calendar(parse_hours({"MCX": {"open": "17:00", "close": "24:00"}}), holidays)
    again = Calendar.from_json(cal.to_json())
    assert again.hours == cal.hours and sorted(again.holidays, key=str) == sorted(holidays, key=str)


@pytest.mark.parametrize(
    "body", [{}, {"data": None}, {"data": [{"closed_exchanges": ["NSE"]}]}, {"data": [{"date": "26 Jan"}]}]
)
def test_a_holiday_list_that_is_not_one_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_holidays(body)


# -- open spans -----------------------------------------------------------------------------


def test_open_spans_are_cut_to_the_window_and_name_their_segments() -> None:
    cal = Calendar()
    spans = cal.open_spans(["NSE_EQ", "NSE_FO", "MCX_FO"], utc(FRIDAY, 9, 0), utc(FRIDAY, 12, 0))
    assert spans == [(utc(FRIDAY, 9, 0), utc(FRIDAY, 12, 0), ["MCX_FO", "NSE_EQ", "NSE_FO"])]
    assert cal.open_spans(["NSE_EQ"], utc(FRIDAY, 11, 0), utc(FRIDAY, 12, 0)) == []  # after the close
    assert cal.open_spans(["NSE_EQ"], utc(FRIDAY, 12, 0), utc(FRIDAY, 11, 0)) == []  # an empty window


def test_a_weekend_in_the_window_splits_the_spans() -> None:
    spans = Calendar().open_spans(["MCX_FO"], utc(FRIDAY, 18, 0), utc(MONDAY, 4, 0))
    assert spans == [
        (utc(FRIDAY, 18, 0), utc(FRIDAY, 18, 25), ["MCX_FO"]),
        (utc(MONDAY, 3, 30), utc(MONDAY, 4, 0), ["MCX_FO"]),
    ]


def test_sessions_that_meet_at_midnight_make_one_span() -> None:
    always = Calendar(parse_hours({"*": {"open": "00:00", "close": "24:00", "days": list(range(7))}}))
    start, end = utc(FRIDAY, 12, 0), utc(MONDAY, 12, 0)
    assert always.open_spans(["NSE_EQ"], start, end) == [(start, end, ["NSE_EQ"])]


def test_a_session_that_begins_on_the_utc_day_before_the_window_is_found() -> None:
    # 04:00-06:00 IST on Friday is Thursday 22:30 to Friday 00:30 UTC.
    early = Calendar(parse_hours({"NSE": {"open": "04:00", "close": "06:00"}}))
    spans = early.open_spans(["NSE_EQ"], utc(FRIDAY, 0, 0), utc(FRIDAY, 1, 0))
    assert spans == [(utc(FRIDAY, 0, 0), utc(FRIDAY, 0, 30), ["NSE_EQ"])]


def test_a_segment_of_no_known_exchange_counts_as_always_open() -> None:
    spans = Calendar().open_spans(["NEW_SEGMENT"], utc(SATURDAY, 1, 0), utc(SATURDAY, 2, 0))
    assert spans == [(utc(SATURDAY, 1, 0), utc(SATURDAY, 2, 0), ["NEW_SEGMENT"])]
