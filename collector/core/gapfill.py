"""The backfill's judging: what one run's answers mean for each gap. No I/O.

A run (:class:`collector.db.backfill.Backfill`) loads the pending gaps with
what the database holds for their minutes (:class:`PendingGap`), asks Upstox
for the candles they lack (:func:`collector.core.gaps.plan_requests`), stores
what came back, and then, without an await: sorts the answers out per
instrument (:func:`sort_out`) and judges each gap (:func:`judge_gap`, by the
rule of :func:`collector.core.gaps.judge`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from collector.core.gaps import HISTORY_START, Answer, Candle, CandleRequest, Verdict, judge
from collector.core.times import ist_day
from collector.exceptions import UpstoxError, UpstoxProtocolError

__all__ = ["Outcome", "PendingGap", "Result", "judge_gap", "sort_out"]

# What became of one request: its candles, the error it met, or why it was not sent.
Result = list[Candle] | UpstoxError | str


@dataclass(slots=True)
class PendingGap:
    """A pending row of ``feed_gaps``, and what the database holds for its minutes."""

    connection: int
    started_at: datetime
    ended_at: datetime
    instruments: list[str]
    attempts: int
    progress: dict[str, Any]
    complete: set[datetime] = field(default_factory=set)  # minutes that are over
    waiting: list[datetime] = field(default_factory=list)  # minutes that are not
    ticks: dict[str, set[datetime]] = field(default_factory=dict)  # minutes with live ticks
    stored: dict[str, set[datetime]] = field(default_factory=dict)  # minutes backfilled

    @property
    def done(self) -> set[str]:
        """Instruments this gap needs nothing more for."""
        return set(self.progress.get("done", []))

    def without_ticks(self, key: str) -> set[datetime]:
        return self.complete - self.ticks.get(key, set())


@dataclass(slots=True)
class Outcome:
    """A run's answers per instrument, and the candles to store."""

    answers: dict[str, Answer]  # what Upstox answered for each instrument
    refused: dict[str, str]  # why Upstox refused an instrument (a 4xx)
    failed: dict[str, str]  # why an instrument is still to be fetched
    rows: dict[tuple[str, datetime], tuple[Candle, str]]  # (key, minute) -> (candle, source)


def sort_out(requests: Sequence[CandleRequest], results: Mapping[CandleRequest, Result]) -> Outcome:
    """Per instrument: its answer, or why Upstox refused it, or why it is still to be fetched."""
    outcome = Outcome({}, {}, {}, {})
    answers, refused, failed, rows = outcome.answers, outcome.refused, outcome.failed, outcome.rows
    for request in requests:
        key = request.instrument_key
        result = results.get(request, "not sent")
        if isinstance(result, UpstoxProtocolError):
            refused[key] = str(result)
            continue
        if not isinstance(result, list):
            failed.setdefault(key, str(result))
            continue
        answer = answers.setdefault(key, Answer({}))
        for candle in result:
            if request.kind == "historical" and not (
                request.from_day
                and request.to_day
                and request.from_day <= ist_day(candle.bucket) <= request.to_day
            ):
                continue
            answer.candles[candle.bucket] = candle
            rows[(key, candle.bucket)] = (candle, f"upstox_{request.kind}")
        if request.kind == "intraday":
            if result:
                answer.newest_intraday = max(c.bucket for c in result)
        elif result and request.from_day and request.to_day:
            days = {
                request.from_day + timedelta(days=i)
                for i in range((request.to_day - request.from_day).days + 1)
            }
            answer.historical_days = answer.historical_days | days
    for key in refused:
        answers.pop(key, None)
    for key in failed:
        answers.pop(key, None)  # partly answered: the rest is asked again, whole
    return outcome


def judge_gap(gap: PendingGap, outcome: Outcome, now: datetime, *, max_attempts: int) -> tuple[Verdict, bool]:
    """The gap's verdict after a run at ``now``, and whether Upstox answered for it in this run.

    Updates the gap's ``attempts`` and ``progress`` (what later runs need to know).
    """
    answers, refused_now, failed = outcome.answers, outcome.refused, outcome.failed
    if not gap.instruments:
        return Verdict(
            "unfillable", "the gap records no instruments (it predates migration 005)", 0, 0, 0, 0
        ), False
    today = ist_day(now)
    done = gap.done
    refused: dict[str, str] = dict(gap.progress.get("refused", {}))
    refused_minutes = int(gap.progress.get("refused_minutes", 0))
    no_trades = int(gap.progress.get("no_trades", 0))
    expected = filled = too_old = unresolved = not_fetched = live_no_trades = 0
    transient: str | None = None
    answered = False
    for key in gap.instruments:
        without = gap.without_ticks(key)
        old = {m for m in without if ist_day(m) < HISTORY_START}
        expected += len(without)
        got = without & gap.stored[key]
        filled += len(got)
        too_old += len(old)
        if key in done:
            continue
        remaining = without - got - old
        if key in refused_now and remaining:
            refused[key] = refused_now[key]
            refused_minutes += len(remaining)
            done.add(key)
            answered = True
            continue
        answer = answers.get(key)
        if remaining and answer is None:
            not_fetched += 1
            transient = transient or failed.get(key, "not fetched")
            continue
        answered = answered or answer is not None
        empty = {m for m in remaining if answer is not None and answer.has_no_trades(m, today)}
        left = remaining - empty
        if not left and not gap.waiting:
            done.add(key)
            no_trades += len(empty)
        else:
            live_no_trades += len(empty)
            unresolved += len(left)
    attempts = gap.attempts + (1 if answered else 0)
    gap.attempts = attempts
    verdict = judge(
        expected=expected, filled=filled, no_trades=no_trades + live_no_trades, refused=refused,
        refused_minutes=refused_minutes, too_old=too_old,
        waiting=len(gap.waiting) * (len(gap.instruments) - len(done)), unresolved=unresolved,
        attempts=attempts, max_attempts=max_attempts, not_fetched=not_fetched,
        transient=transient,
    )  # fmt: skip
    progress: dict[str, Any] = {
        "refused": refused,
        "refused_minutes": refused_minutes,
        "no_trades": no_trades,
    }
    if verdict.status == "pending":
        progress["done"] = sorted(done)
    gap.progress = progress
    return verdict, answered
