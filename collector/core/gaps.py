"""Filling gaps: which minutes a gap left without ticks, what to ask Upstox, what it answered. No I/O.

A gap (a row of ``feed_gaps``) is a span ``[started_at, ended_at)`` during
which a connection was down while a segment it carries was open, with the
instruments it carried. Its minutes are the 1-minute buckets that span
touches. A minute *needs* a candle from Upstox when it is over and has no
live tick of the instrument (a reconnect snapshot is not a live tick: it
repeats the last trade of the gap, with the whole gap's volume); the rest of
the pipeline (:mod:`collector.db.backfill`) fetches those candles and stores
them in ``candles_backfill``.

Upstox serves today's (IST) 1-minute candles at the intraday endpoint and
earlier days' at the historical one, at most one month per request, from
January 2022 on. One intraday request per instrument answers every gap of
today; historical requests cover the needed days of an instrument in windows
of :data:`MAX_DAYS_PER_REQUEST`.

What an answer proves about a needed minute it lacks: Upstox publishes an
instrument's minutes in order and skips minutes without trades, so a minute
older than a candle in the same answer had no trades; a historical answer
with any candle is final for its days. An empty answer proves nothing (the
data may not be published yet): that minute stays *unresolved*, and is tried
again on the next run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from collector.core.times import ist_day

__all__ = [
    "FILL_STATUSES",
    "HISTORY_START",
    "MAX_DAYS_PER_REQUEST",
    "Answer",
    "Candle",
    "CandleRequest",
    "FillStatus",
    "Verdict",
    "gap_minutes",
    "judge",
    "minute_of",
    "parse_candles",
    "plan_requests",
]

MINUTE = timedelta(minutes=1)
# Upstox's 1-minute history starts in January 2022.
HISTORY_START = date(2022, 1, 1)
# "At most one month per request": 28 days is within any reading of it.
MAX_DAYS_PER_REQUEST = 28
CANDLES_PATH = "/v3/historical-candle"

FillStatus = Literal["pending", "filled", "partial", "unfillable"]
FILL_STATUSES: tuple[FillStatus, ...] = ("pending", "filled", "partial", "unfillable")


def minute_of(t: datetime) -> datetime:
    """The start of the minute holding ``t``."""
    return t.replace(second=0, microsecond=0)


def gap_minutes(start: datetime, end: datetime) -> list[datetime]:
    """Every minute that ``[start, end)`` touches, oldest first (none when it is empty)."""
    out: list[datetime] = []
    if end <= start:
        return out
    m = minute_of(start)
    while m < end:
        out.append(m)
        m += MINUTE
    return out


@dataclass(frozen=True, slots=True, order=True)
class CandleRequest:
    """One GET of 1-minute candles: today's (``intraday``) or ``from_day``..``to_day``."""

    instrument_key: str
    kind: Literal["intraday", "historical"]
    from_day: date | None = None
    to_day: date | None = None

    @property
    def path(self) -> str:
        key = quote(self.instrument_key, safe="")  # "|" is %7C, a space %20
        if self.kind == "intraday":
            return f"{CANDLES_PATH}/intraday/{key}/minutes/1"
        assert self.from_day is not None and self.to_day is not None
        return f"{CANDLES_PATH}/{key}/minutes/1/{self.to_day.isoformat()}/{self.from_day.isoformat()}"

    def covers(self, minute: datetime, today: date) -> bool:
        day = ist_day(minute)
        if self.kind == "intraday":
            return day == today
        assert self.from_day is not None and self.to_day is not None
        return self.from_day <= day <= self.to_day


def plan_requests(needs: Mapping[str, Iterable[datetime]], today: date) -> list[CandleRequest]:
    """The fewest requests that fetch every needed minute of every instrument.

    Minutes of ``today`` (IST) take one intraday request per instrument;
    earlier days take historical requests, each spanning at most
    :data:`MAX_DAYS_PER_REQUEST` days from its first needed day. Days before
    :data:`HISTORY_START` are not requested (Upstox has nothing).
    """
    out: list[CandleRequest] = []
    for key in sorted(needs):
        days = sorted({ist_day(m) for m in needs[key]})
        if today in days:
            out.append(CandleRequest(key, "intraday"))
        window_start: date | None = None
        window_end: date | None = None
        for day in days:
            if day >= today or day < HISTORY_START:
                continue
            if window_start is not None and (day - window_start).days < MAX_DAYS_PER_REQUEST:
                window_end = day
                continue
            if window_start is not None and window_end is not None:
                out.append(CandleRequest(key, "historical", window_start, window_end))
            window_start = window_end = day
        if window_start is not None and window_end is not None:
            out.append(CandleRequest(key, "historical", window_start, window_end))
    return out


@dataclass(frozen=True, slots=True)
class Candle:
    """One of Upstox's 1-minute candles, ``bucket`` in UTC."""

    bucket: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    oi: float | None


def parse_candles(payload: Any) -> list[Candle]:
    """Candles from a candle endpoint's body; raises ValueError when it is not one."""
    try:
        rows = payload["data"]["candles"]
        if payload.get("status") != "success" or not isinstance(rows, list):
            raise TypeError
    except (KeyError, TypeError, AttributeError):
        raise ValueError("not a candle answer: no data.candles array") from None
    out = []
    for row in rows:
        try:
            ts, o, h, lo, c, v, *rest = row
            when = datetime.fromisoformat(ts)
            if when.tzinfo is None or when.second or when.microsecond:
                raise ValueError
            out.append(
                Candle(
                    when.astimezone(UTC), float(o), float(h), float(lo), float(c), int(v),
                    float(rest[0]) if rest and rest[0] is not None else None,
                )
            )  # fmt: skip
        except (TypeError, ValueError):
            raise ValueError(f"bad candle {str(row)[:200]}") from None
    return out


@dataclass(slots=True)
class Answer:
    """What Upstox answered for one instrument, over all of this run's requests."""

    candles: dict[datetime, Candle]
    # Per request kind: the newest candle of a non-empty answer (None: empty answer).
    newest_intraday: datetime | None = None
    historical_days: frozenset[date] = frozenset()  # days of historical answers with candles

    def has_no_trades(self, minute: datetime, today: date) -> bool:
        """Whether a minute absent from the answer provably had no trades."""
        if ist_day(minute) == today:
            return self.newest_intraday is not None and self.newest_intraday > minute
        return ist_day(minute) in self.historical_days


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a gap stands after a run: its state, why, and its counts."""

    status: FillStatus
    detail: str
    expected: int  # instrument-minutes without live ticks
    filled: int  # of those, with a backfilled candle
    no_trades: int  # of those, provably without trades at Upstox
    missing: int  # of those, neither (yet)


def judge(
    *,
    expected: int,
    filled: int,
    no_trades: int,
    refused: Mapping[str, str],
    refused_minutes: int,
    too_old: int,
    waiting: int,
    unresolved: int,
    attempts: int,
    max_attempts: int,
    not_fetched: int,
    transient: str | None,
) -> Verdict:
    """The gap's state from its counts (instrument-minutes unless named otherwise).

    ``waiting``: minutes not over yet; ``unresolved``: answered but absent
    (or empty) minutes; ``not_fetched``: instruments whose request was not
    made (budget) or failed transiently (``transient`` says why). The gap is
    final once nothing is waiting, fetchable or unresolved, or when the
    unresolved minutes have been asked for ``max_attempts`` times; it is
    ``filled`` when every needed minute has a candle or had no trades,
    ``partial`` when some could not be had, ``unfillable`` when none could.
    """
    missing = expected - filled - no_trades
    counts = f"{filled} of {expected} instrument-minutes filled from Upstox's candles"
    if no_trades:
        counts += f", {no_trades} had no trades"
    why = []
    if refused:
        key, reason = sorted(refused.items())[0]
        more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
        why.append(f"Upstox refused {key}{more} ({reason}): {refused_minutes} instrument-minutes")
    if too_old:
        why.append(f"{too_old} instrument-minutes are older than Upstox's 1-minute history ({HISTORY_START})")
    if waiting or not_fetched or (unresolved and attempts < max_attempts):
        todo = []
        if waiting:
            todo.append(f"waiting for {waiting} instrument-minutes to end")
        if not_fetched:
            todo.append(
                f"{not_fetched} instruments not fetched yet" + (f" ({transient})" if transient else "")
            )
        if unresolved:
            todo.append(
                f"{unresolved} instrument-minutes not in Upstox's answer yet (attempt {attempts} of {max_attempts})"
            )
        parts = [counts, *why, *todo] if expected else [*why, *todo]
        return Verdict("pending", "; ".join(parts), expected, filled, no_trades, missing)
    if unresolved:
        why.append(
            f"{unresolved} instrument-minutes still absent from Upstox's answers after {attempts} attempts"
        )
    if missing <= 0:
        detail = counts if expected else "nothing missing: every minute of the gap has ticks"
        return Verdict("filled", detail, expected, filled, no_trades, 0)
    status: FillStatus = "partial" if filled or no_trades else "unfillable"
    return Verdict(status, "; ".join([counts, *why]), expected, filled, no_trades, missing)
