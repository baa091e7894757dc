"""The simulator's candle and holiday endpoints, their faults on demand, and its count of REST requests. No I/O.

Upstox serves 1-minute candles of today (IST) at
``/v3/historical-candle/intraday/{key}/minutes/1`` and of earlier days at
``/v3/historical-candle/{key}/minutes/1/{to_date}/{from_date}`` (at most one
month per request), both as ``{"status": "success", "data": {"candles":
[[timestamp, open, high, low, close, volume, oi], ...]}}``, newest first, with
ISO timestamps in +05:30. Here the candles are the market's own
(:meth:`~collector.simulator.market.SimMarket.candles`): what its trades
gave, whether or not anyone was listening.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from collector.core.calendar import EXCHANGE_OF_SEGMENT
from collector.core.times import IST
from collector.simulator.market import SimMarket

__all__ = [
    "CANDLE_PREFIX",
    "HOLIDAYS_PATH",
    "CandleFault",
    "RestApi",
    "RestLog",
    "answer_candles",
    "holiday_closed",
]

CANDLE_PREFIX = "/v3/historical-candle/"
HOLIDAYS_PATH = "/v2/market/holidays"
MAX_RANGE_DAYS = 31  # "at most one month per request" for 1-15 minute candles


@dataclass(frozen=True, slots=True)
class CandleFault:
    """One faulty answer: ``status`` (0: success with no candles), for ``key`` or any key."""

    status: int
    retry_after_s: float | None = None
    key: str | None = None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "errors": [{"errorCode": code, "message": message}]}


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=IST).timestamp() * 1000)


def answer_candles(market: SimMarket, path: str, now_s: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a candle request ``path`` (still percent-encoded)."""
    parts = [unquote(p) for p in path[len(CANDLE_PREFIX) :].split("/")]
    intraday = parts[0] == "intraday"
    if intraday:
        parts = parts[1:]
    if len(parts) not in ((3,) if intraday else (4, 5)):
        return 404, _error("UDAPI100060", "Resource not found")
    key, unit, interval, *dates = parts
    if key not in market.instruments:
        return 400, _error("UDAPI1021", "Instrument key is invalid")
    if unit != "minutes" or interval != "1":
        return 400, _error("UDAPI1146", "the simulator serves 1-minute candles only")
    today = datetime.fromtimestamp(now_s, IST).date()
    if intraday:
        first, last = today, today
    else:
        try:
            last = date.fromisoformat(dates[0])
            first = (
                date.fromisoformat(dates[1]) if len(dates) == 2 else last - timedelta(days=MAX_RANGE_DAYS - 1)
            )
        except ValueError:
            return 400, _error("UDAPI1015", "Invalid date format: use YYYY-MM-DD")
        if last < first:
            return 400, _error("UDAPI1017", "to_date must not be before from_date")
        if (last - first).days >= MAX_RANGE_DAYS:
            return 400, _error("UDAPI1148", "Date range exceeds one month for minute candles")
        last = min(last, today - timedelta(days=1))  # today is the intraday endpoint's
    candles = market.candles(key, _day_start_ms(first), _day_start_ms(last + timedelta(days=1)))
    rows = [
        [datetime.fromtimestamp(m / 1000, IST).isoformat(), o, h, lo, c, v, oi]
        for m, o, h, lo, c, v, oi in reversed(candles)  # newest first, as Upstox sends them
    ]
    return 200, {"status": "success", "data": {"candles": rows}}


def holiday_closed(holidays: Sequence[Mapping[str, Any]], segment: str, now_s: float) -> bool:
    """Whether ``segment``'s exchange is closed now for a holiday (outside a special session)."""
    exchange = EXCHANGE_OF_SEGMENT.get(segment)
    today = datetime.fromtimestamp(now_s, IST).date().isoformat()
    now_ms = now_s * 1000
    for item in holidays:
        if item.get("date") != today or exchange not in (item.get("closed_exchanges") or []):
            continue
        return not any(
            o.get("exchange") == exchange and o["start_time"] <= now_ms < o["end_time"]
            for o in item.get("open_exchanges") or []
        )
    return False


@dataclass
class RestLog:
    """When each REST request arrived (monotonic seconds), per API."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def record(self, api: str, at: float | None = None) -> None:
        self.times.setdefault(api, []).append(time.monotonic() if at is None else at)

    def counts(self) -> dict[str, int]:
        return {api: len(t) for api, t in self.times.items()}

    def max_in_window(self, window_s: float, api: str | None = None) -> int:
        """The most requests (of ``api``, or of all) seen in any window of ``window_s``.

        Upstox counts per API; with ``api`` None every API counts together,
        which is stricter.
        """
        times = sorted(self.times.get(api, []) if api else [t for ts in self.times.values() for t in ts])
        best = 0
        for i, start in enumerate(times):
            # Requests at start .. start + window (exclusive): the window opening at this one.
            best = max(best, bisect_left(times, start + window_s, lo=i) - i)
        return best

    def between(self, start: float, end: float, api: str) -> int:
        """Requests of ``api`` that arrived in [start, end]."""
        times = self.times.get(api, [])
        return bisect_right(times, end) - bisect_left(times, start)


class RestApi:
    """The candle and holiday endpoints as the simulator serves them, faults included.

    ``candle_faults`` are taken in order, each by the first request it matches
    (its ``key``, or any); ``holiday_faults`` are statuses for the next holiday
    list requests. ``log`` holds when every REST request arrived.
    """

    def __init__(self, market: SimMarket, holidays: Sequence[Mapping[str, Any]] = ()) -> None:
        self.market = market
        self.holidays: list[dict[str, Any]] = [dict(h) for h in holidays]
        self.log = RestLog()
        self.candle_faults: deque[CandleFault] = deque()
        self.holiday_faults: list[int] = []

    def candles(self, path: str, now_s: float) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, extra headers) for a candle request."""
        fault = self._take(path)
        if fault is not None and fault.status:
            after = {"Retry-After": f"{fault.retry_after_s:g}"} if fault.retry_after_s is not None else {}
            return fault.status, _error("UDAPI100500", "simulated failure"), after
        status, payload = answer_candles(self.market, path, now_s)
        if fault is not None and status == 200:  # status 0: a success without candles
            payload = {"status": "success", "data": {"candles": []}}
        return status, payload, {}

    def holiday_list(self, path: str) -> tuple[int, dict[str, Any]]:
        """(status, body) for ``/v2/market/holidays`` or ``/v2/market/holidays/{date}``."""
        if self.holiday_faults:
            return self.holiday_faults.pop(0), _error("UDAPI100500", "simulated failure")
        day = path[len(HOLIDAYS_PATH) + 1 :]
        return 200, {
            "status": "success",
            "data": [h for h in self.holidays if not day or h.get("date") == day],
        }

    def _take(self, path: str) -> CandleFault | None:
        for i, fault in enumerate(self.candle_faults):
            if fault.key is None or fault.key in unquote(path):
                del self.candle_faults[i]
                return fault
        return None
