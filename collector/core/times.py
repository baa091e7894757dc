"""Time facts: India's offset, an instant's IST day, the Unix epoch, datetime's limits. No I/O.

Indian markets keep IST (UTC+05:30, no daylight saving), and so do Upstox's
days: a trading day, a holiday, an intraday candle request are IST dates.
Everything the collector stores is an aware UTC datetime.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Final

__all__ = [
    "DAY_MS",
    "EPOCH",
    "IST",
    "IST_OFFSET",
    "IST_OFFSET_MS",
    "MAX_EPOCH_MS",
    "ist_day",
    "ist_time",
]

IST_OFFSET: Final = timedelta(hours=5, minutes=30)
IST: Final = timezone(IST_OFFSET, "IST")
IST_OFFSET_MS: Final = 19_800_000
DAY_MS: Final = 86_400_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# 9999-12-31T23:59:59.999Z: the last millisecond a datetime can hold.
MAX_EPOCH_MS: Final = 253_402_300_799_999


def ist_day(t: datetime) -> date:
    """The IST calendar day of an aware datetime: a trading day, Upstox's day for candles and holidays."""
    if t.tzinfo is UTC:
        return (t + IST_OFFSET).date()  # the common case, once per tick: five times faster
    return t.astimezone(IST).date()


def ist_time(day: date, at: time = time()) -> datetime:
    """``at`` o'clock IST on ``day`` (midnight by default), as an aware UTC datetime."""
    return datetime.combine(day, at, UTC) - IST_OFFSET
