"""When Indian markets are open: session hours per exchange, weekends, holidays. No I/O.

While a connection is up, Upstox's ``market_info`` frames say whether a
segment is open. While nobody listens (the collector was stopped, killed, or
its connection was down) nothing says so, and a gap must only be recorded for
time a market was really open. This calendar answers that: regular hours per
exchange (IST), Monday to Friday, minus Upstox's market holidays
(``GET /v2/market/holidays``), plus the special sessions those list
(``open_exchanges``, e.g. Muhurat trading or MCX's evening session on a
holiday).

Hours can be replaced per exchange (``COLLECTOR_MARKET_HOURS``), e.g. for a
desk that treats MCX's US-summer close differently, or for tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from collector.core.times import ist_day, ist_time

__all__ = [
    "DEFAULT_HOURS",
    "EXCHANGE_OF_SEGMENT",
    "SEGMENTS",
    "Calendar",
    "Holiday",
    "Hours",
    "parse_holidays",
    "parse_hours",
]

# Upstox's exchange codes (holiday lists and candle APIs) for each feed segment.
EXCHANGE_OF_SEGMENT = {
    "NSE_EQ": "NSE", "NSE_INDEX": "NSE", "NSE_COM": "NSE", "NSE_FO": "NFO",
    "BSE_EQ": "BSE", "BSE_INDEX": "BSE", "BSE_FO": "BFO",
    "NCD_FO": "CDS", "BCD_FO": "BCD", "MCX_FO": "MCX", "MCX_INDEX": "MCX",
}  # fmt: skip
# Upstox's feed segments: the labels of every per-segment metric.
SEGMENTS: tuple[str, ...] = tuple(EXCHANGE_OF_SEGMENT)
WEEKDAYS = frozenset(range(5))


@dataclass(frozen=True, slots=True)
class Hours:
    """A regular session in IST on the given weekdays (Monday is 0); close 24:00 is midnight."""

    open: time
    close: time | None  # None: until midnight
    weekdays: frozenset[int] = WEEKDAYS


def _hhmm(value: str) -> time | None:
    if value == "24:00":
        return None
    hh, _, mm = value.partition(":")
    if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise ValueError(f"{value!r} is not HH:MM")
    return time(int(hh), int(mm))


DEFAULT_HOURS: Mapping[str, Hours] = {
    # Normal market, 09:15-15:30 IST; pre-open (09:00-09:08) trades nothing.
    "NSE": Hours(time(9, 15), time(15, 30)),
    "NFO": Hours(time(9, 15), time(15, 30)),
    "BSE": Hours(time(9, 15), time(15, 30)),
    "BFO": Hours(time(9, 15), time(15, 30)),
    "CDS": Hours(time(9, 0), time(17, 0)),
    "BCD": Hours(time(9, 0), time(17, 0)),
    # MCX closes at 23:30 or 23:55 depending on US daylight saving: take the later.
    "MCX": Hours(time(9, 0), time(23, 55)),
}


def parse_hours(spec: Mapping[str, Any]) -> dict[str, Hours]:
    """Hours from JSON: ``{"NSE": {"open": "09:15", "close": "15:30", "days": [0, 1, 2, 3, 4]}}``.

    ``"*"`` sets every exchange; named ones win over it. Exchanges not named
    keep their defaults.
    """
    hours = dict(DEFAULT_HOURS)
    ordered = sorted(spec.items(), key=lambda kv: kv[0] != "*")
    for name, value in ordered:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}: expected {{'open': 'HH:MM', 'close': 'HH:MM', 'days': [...]}}")
        opens = _hhmm(str(value.get("open", "09:15")))
        if opens is None:
            raise ValueError(f"{name}: open cannot be 24:00")
        days = value.get("days", sorted(WEEKDAYS))
        if not isinstance(days, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
            raise ValueError(f"{name}: days must be weekday numbers 0 (Monday) to 6")
        h = Hours(opens, _hhmm(str(value.get("close", "15:30"))), frozenset(days))
        for exchange in hours if name == "*" else [name]:
            hours[exchange] = h
    return hours


@dataclass(frozen=True, slots=True)
class Holiday:
    """One day of Upstox's holiday list: exchanges closed, and special sessions (UTC)."""

    day: date
    closed: frozenset[str]
    special: tuple[tuple[str, datetime, datetime], ...] = ()
    description: str = ""


def parse_holidays(payload: Any) -> list[Holiday]:
    """Holidays from the body of ``GET /v2/market/holidays``; raises ValueError if malformed."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), list):
        raise ValueError("not a holiday list: no 'data' array")
    out = []
    for item in payload["data"]:
        try:
            day = date.fromisoformat(item["date"])
            closed = frozenset(str(x) for x in item.get("closed_exchanges") or [])
            special = tuple(
                (
                    str(o["exchange"]),
                    datetime.fromtimestamp(int(o["start_time"]) / 1000, UTC),
                    datetime.fromtimestamp(int(o["end_time"]) / 1000, UTC),
                )
                for o in item.get("open_exchanges") or []
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad holiday entry {item!r}: {exc}") from None
        out.append(Holiday(day, closed, special, str(item.get("description", ""))))
    return out


@dataclass(slots=True)
class Calendar:
    """Open sessions per exchange; times are aware datetimes, sessions are IST."""

    hours: Mapping[str, Hours] = field(default_factory=lambda: dict(DEFAULT_HOURS))
    holidays: Iterable[Holiday] = ()
    _by_day: dict[date, Holiday] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._by_day = {h.day: h for h in self.holidays}

    def sessions(self, exchange: str, day: date) -> list[tuple[datetime, datetime]]:
        """The exchange's open spans on IST ``day``, in UTC."""
        holiday = self._by_day.get(day)
        special = [(s, e) for ex, s, e in (holiday.special if holiday else ()) if ex == exchange]
        if holiday is not None and (exchange in holiday.closed or special):
            return special
        h = self.hours.get(exchange)
        if h is None or day.weekday() not in h.weekdays:
            return special
        start = ist_time(day, h.open)
        end = ist_time(day, h.close) if h.close else ist_time(day + timedelta(days=1))
        return [(start, end)]

    def _around(self, exchange: str, t: datetime, days_back: int) -> list[tuple[datetime, datetime]]:
        day = ist_day(t)
        spans = []
        for back in range(days_back, -1, -1):
            spans.extend(self.sessions(exchange, day - timedelta(days=back)))
        return spans

    def is_open(self, segment: str, t: datetime) -> bool:
        """Whether ``segment`` trades at ``t`` by the calendar (a segment of no known exchange: always)."""
        exchange = EXCHANGE_OF_SEGMENT.get(segment)
        if exchange is None:
            return True
        return any(s <= t < e for s, e in self._around(exchange, t, 1))

    def last_change(self, segment: str, t: datetime) -> datetime | None:
        """When ``segment`` last opened or closed by the calendar, at or before ``t`` (None: never, as far
        as a fortnight back, or a segment of no known exchange)."""
        exchange = EXCHANGE_OF_SEGMENT.get(segment)
        if exchange is None:
            return None
        edges = [edge for span in self._around(exchange, t, 14) for edge in span if edge <= t]
        return max(edges, default=None)

    def open_spans(
        self, segments: Iterable[str], start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime, list[str]]]:
        """Maximal spans within [start, end) during which any of ``segments`` was open.

        Each span lists the segments open at some moment in it. A segment with
        no known exchange counts as always open: better a gap too many than one
        missed.
        """
        if end <= start:
            return []
        pieces: list[tuple[datetime, datetime, str]] = []
        first, last = ist_day(start) - timedelta(days=1), ist_day(end)
        for segment in sorted(set(segments)):
            exchange = EXCHANGE_OF_SEGMENT.get(segment)
            if exchange is None:
                pieces.append((start, end, segment))
                continue
            day = first
            while day <= last:
                for s, e in self.sessions(exchange, day):
                    s, e = max(s, start), min(e, end)
                    if s < e:
                        pieces.append((s, e, segment))
                day += timedelta(days=1)
        pieces.sort()
        spans: list[tuple[datetime, datetime, list[str]]] = []
        for s, e, segment in pieces:
            if spans and s <= spans[-1][1]:
                ps, pe, segs = spans[-1]
                spans[-1] = (ps, max(pe, e), segs if segment in segs else [*segs, segment])
            else:
                spans.append((s, e, [segment]))
        return [(s, e, sorted(segs)) for s, e, segs in spans]

    def to_json(self) -> dict[str, Any]:
        """What a feed process needs to rebuild this calendar."""
        return {
            "hours": {
                ex: {"open": h.open.strftime("%H:%M"), "close": h.close.strftime("%H:%M") if h.close else "24:00",
                     "days": sorted(h.weekdays)}
                for ex, h in self.hours.items()
            },
            "holidays": [
                {"date": h.day.isoformat(), "closed_exchanges": sorted(h.closed), "description": h.description,
                 "open_exchanges": [{"exchange": ex, "start_time": int(s.timestamp() * 1000),
                                     "end_time": int(e.timestamp() * 1000)} for ex, s, e in h.special]}
                for h in self._by_day.values()
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calendar:
        return cls(parse_hours(data.get("hours", {})), parse_holidays({"data": data.get("holidays", [])}))
