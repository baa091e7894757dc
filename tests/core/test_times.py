from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from collector.core.times import (
    DAY_MS,
    EPOCH,
    IST,
    IST_OFFSET,
    IST_OFFSET_MS,
    MAX_EPOCH_MS,
    ist_day,
    ist_time,
)

MS = timedelta(milliseconds=1)


def test_the_constants_agree_with_each_other() -> None:
    assert IST_OFFSET_MS * MS == IST_OFFSET and DAY_MS * MS == timedelta(days=1)
    assert EPOCH + MAX_EPOCH_MS * MS == datetime.max.replace(microsecond=999_000, tzinfo=UTC)


def test_ist_day_turns_at_18_30_utc_whatever_the_time_zone() -> None:
    assert ist_day(datetime(2026, 11, 20, 18, 29, 59, tzinfo=UTC)) == date(2026, 11, 20)
    assert ist_day(datetime(2026, 11, 20, 18, 30, tzinfo=UTC)) == date(2026, 11, 21)
    assert ist_day(datetime(2026, 11, 21, 0, 0, tzinfo=IST)) == date(2026, 11, 21)
    assert ist_day(datetime(2026, 11, 20, 13, 0, tzinfo=IST).astimezone(UTC)) == date(2026, 11, 20)


def test_ist_time_is_utc() -> None:
    assert ist_time(date(2026, 11, 20)) == datetime(2026, 11, 19, 18, 30, tzinfo=UTC)
    assert ist_time(date(2026, 11, 20), time(9, 15)) == datetime(2026, 11, 20, 3, 45, tzinfo=UTC)
    assert ist_time(date(2026, 11, 20)).tzinfo is UTC
