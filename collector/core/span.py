"""A span of recorded time from the command line (``--from``/``--to``), and its IST days. No I/O.

Times are ISO 8601. Without an offset they are IST, as Indian markets
are read; with one they are what it says, ``Z`` or ``+00:00`` being UTC:

    2026-11-27              00:00 IST on that day
    2026-11-27T09:15        09:15 IST (also "2026-11-27 09:15", seconds optional)
    2026-11-27T09:15+05:30  09:15 IST
    2026-11-27T03:45Z       03:45 UTC, the same instant

A trading day is an IST calendar day: 00:00 to 24:00 IST.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from collector.core.times import IST, ist_day, ist_time

__all__ = ["FORMS", "SpanError", "day_bounds", "days", "ist_day", "parse_instant", "parse_span", "show"]

FORMS = "YYYY-MM-DD[THH:MM[:SS]] in IST, or with an offset: ...Z or ...+00:00 for UTC, ...+05:30 for IST"


class SpanError(ValueError):
    """A ``--from``/``--to`` that cannot be read, or a span that ends before it starts."""


def parse_instant(text: str, what: str = "time") -> datetime:
    """An aware UTC datetime from one of the forms above; raises SpanError."""
    value = text.strip()
    try:
        if len(value) == 10:  # a bare date: the start of that IST day
            return day_bounds(date.fromisoformat(value))[0]
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise SpanError(f"{what} {text!r} is not {FORMS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=IST)
    return moment.astimezone(UTC)


def parse_span(start: str, end: str) -> tuple[datetime, datetime]:
    """``--from`` and ``--to`` as UTC instants, the end excluded; raises SpanError."""
    first = parse_instant(start, "--from")
    last = parse_instant(end, "--to")
    if last <= first:
        raise SpanError(f"--to ({show(last)}) is not after --from ({show(first)})")
    return first, last


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """00:00 IST of ``day`` and of the next day, in UTC."""
    start = ist_time(day)
    return start, start + timedelta(days=1)


def days(first: date, last: date) -> Iterator[date]:
    """Every day from ``first`` to ``last``, both included."""
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def show(t: datetime) -> str:
    """An instant as people here read it: IST, to the second."""
    return t.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S IST")
