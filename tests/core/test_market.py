"""Whether a segment is open: Upstox's word while connected and current, the calendar otherwise."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from collector.core.calendar import Calendar, Holiday
from collector.core.market import MarketView
from collector.core.times import ist_time

MONDAY = date(2026, 11, 30)


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return ist_time(day, time(hh, mm))


def test_the_calendar_knows_open_and_the_last_change() -> None:
    cal = Calendar()
    assert cal.is_open("NSE_FO", at(MONDAY, 10))
    assert not cal.is_open("NSE_FO", at(MONDAY, 16))
    assert not cal.is_open("NSE_FO", at(MONDAY, 9, 14))
    assert cal.last_change("NSE_FO", at(MONDAY, 10)) == at(MONDAY, 9, 15)
    assert cal.last_change("NSE_FO", at(MONDAY, 20)) == at(MONDAY, 15, 30)
    # Monday morning before the open: the last change was Friday's close.
    assert cal.last_change("NSE_FO", at(MONDAY, 8)) == at(MONDAY - timedelta(days=3), 15, 30)
    # MCX trades into the night.
    assert cal.is_open("MCX_FO", at(MONDAY, 23, 30))
    assert not cal.is_open("MCX_FO", at(MONDAY + timedelta(days=1), 0, 5))
    # A segment of no known exchange is always open, and never changes.
    assert cal.is_open("XYZ_FO", at(MONDAY, 3)) and cal.last_change("XYZ_FO", at(MONDAY, 3)) is None


def test_a_holiday_closes_the_day_and_a_special_session_opens_an_evening() -> None:
    muhurat = (at(MONDAY, 18), at(MONDAY, 19))
    cal = Calendar(holidays=[Holiday(MONDAY, frozenset({"NSE", "NFO"}), (("NSE", *muhurat),), "Diwali")])
    assert not cal.is_open("NSE_FO", at(MONDAY, 10))
    assert not cal.is_open("NSE_EQ", at(MONDAY, 10))
    assert cal.is_open("NSE_EQ", at(MONDAY, 18, 30))
    assert cal.last_change("NSE_EQ", at(MONDAY, 18, 30)) == muhurat[0]
    assert cal.is_open("BSE_EQ", at(MONDAY, 10))  # BSE is not on that list


def test_nobody_connected_the_calendar_decides() -> None:
    view = MarketView(Calendar())
    assert view.is_open("NSE_FO", at(MONDAY, 10))
    assert not view.is_open("NSE_FO", at(MONDAY, 20))


def test_a_connected_report_newer_than_the_calendar_wins() -> None:
    view = MarketView(Calendar())
    view.connected(0)
    # Upstox closes NSE_FO early (an outage at the exchange): the calendar says open.
    view.report(0, "NSE_FO", "NORMAL_CLOSE", at(MONDAY, 11))
    assert not view.is_open("NSE_FO", at(MONDAY, 12))
    view.report(0, "NSE_FO", "NORMAL_OPEN", at(MONDAY, 12, 30))
    assert view.is_open("NSE_FO", at(MONDAY, 13))


def test_a_report_older_than_the_calendar_s_last_change_is_stale() -> None:
    # Connected all night: Upstox said "closed" in the evening and nothing since. At 09:15 the
    # calendar opens the market and the evening's word no longer counts.
    view = MarketView(Calendar())
    view.connected(0)
    view.report(0, "NSE_FO", "NORMAL_CLOSE", at(MONDAY - timedelta(days=3), 20))
    assert not view.is_open("NSE_FO", at(MONDAY, 9))
    assert view.is_open("NSE_FO", at(MONDAY, 9, 20))


def test_a_disconnected_connection_s_reports_do_not_count() -> None:
    view = MarketView(Calendar())
    view.connected(0)
    view.report(0, "NSE_FO", "NORMAL_CLOSE", at(MONDAY, 11))
    assert not view.is_open("NSE_FO", at(MONDAY, 12))
    view.disconnected(0)
    assert view.is_open("NSE_FO", at(MONDAY, 12))
    view.report(0, "NSE_FO", "NORMAL_CLOSE", at(MONDAY, 12, 1))  # heard while down: ignored
    assert view.is_open("NSE_FO", at(MONDAY, 12, 2))


def test_the_newest_report_of_several_connections_counts() -> None:
    view = MarketView(Calendar())
    view.connected(0)
    view.connected(1)
    view.report(0, "NSE_EQ", "NORMAL_OPEN", at(MONDAY, 10))
    view.report(1, "NSE_EQ", "NORMAL_CLOSE", at(MONDAY, 10, 5))
    assert not view.is_open("NSE_EQ", at(MONDAY, 10, 6))
