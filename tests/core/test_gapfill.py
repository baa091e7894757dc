"""The backfill's judging, without a database or Upstox: answers sorted per instrument, gaps judged."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from collector.core.gapfill import Outcome, PendingGap, judge_gap, sort_out
from collector.core.gaps import MINUTE, Answer, Candle, CandleRequest
from collector.exceptions import UpstoxNetworkError, UpstoxProtocolError

T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 09:30 IST
M0, M1, M2, M3 = (T0 + i * MINUTE for i in range(4))
NOW = T0 + timedelta(minutes=10)
DAY = date(2026, 11, 20)


def candle(at: datetime) -> Candle:
    return Candle(at, 1.0, 2.0, 0.5, 1.5, 10, None)


def gap(*minutes: datetime, keys: tuple[str, ...] = ("A",), **kw: object) -> PendingGap:
    g = PendingGap(0, T0, T0 + 3 * MINUTE, list(keys), kw.pop("attempts", 0), kw.pop("progress", {}))  # type: ignore[arg-type]
    g.complete = set(minutes)
    g.ticks = {k: set() for k in keys}
    g.stored = {k: set() for k in keys}
    for name, value in kw.items():
        setattr(g, name, value)
    return g


def outcome(**kw: object) -> Outcome:
    return Outcome(kw.get("answers", {}), kw.get("refused", {}), kw.get("failed", {}), {})  # type: ignore[arg-type]


# -- sorting answers out --------------------------------------------------------------------


def test_each_instrument_gets_its_answer_its_refusal_or_why_it_waits() -> None:
    ok, refused, failed, unsent = (CandleRequest(k, "intraday") for k in "ABCD")
    result = sort_out(
        [ok, refused, failed, unsent],
        {ok: [candle(M0), candle(M2)], refused: UpstoxProtocolError("candles answered 400: bad key"),
         failed: UpstoxNetworkError("candles failed: reset")},
    )  # fmt: skip
    assert set(result.answers) == {"A"} and result.answers["A"].newest_intraday == M2
    assert result.refused == {"B": "candles answered 400: bad key"}
    assert result.failed == {"C": "candles failed: reset", "D": "not sent"}
    assert result.rows == {
        ("A", M0): (candle(M0), "upstox_intraday"),
        ("A", M2): (candle(M2), "upstox_intraday"),
    }


def test_a_historical_answer_covers_its_days_and_keeps_only_their_candles() -> None:
    request = CandleRequest("A", "historical", DAY - timedelta(days=3), DAY - timedelta(days=2))
    inside, outside = M0 - timedelta(days=2), M0 - timedelta(days=1)
    result = sort_out([request], {request: [candle(inside), candle(outside)]})
    answer = result.answers["A"]
    assert set(answer.candles) == {inside} and list(result.rows) == [("A", inside)]
    assert answer.historical_days == {DAY - timedelta(days=3), DAY - timedelta(days=2)}


def test_an_instrument_answered_in_part_is_asked_again_whole() -> None:
    today, earlier = (
        CandleRequest("A", "intraday"),
        CandleRequest("A", "historical", DAY - timedelta(days=1), DAY - timedelta(days=1)),
    )
    result = sort_out([today, earlier], {today: [candle(M0)], earlier: UpstoxNetworkError("reset")})
    assert "A" not in result.answers and result.failed == {"A": "reset"}


# -- judging a gap --------------------------------------------------------------------------


def test_a_gap_without_instruments_is_unfillable() -> None:
    verdict, answered = judge_gap(gap(M0, keys=()), outcome(), NOW, max_attempts=5)
    assert verdict.status == "unfillable" and not answered


def test_every_minute_backfilled_is_filled_without_asking() -> None:
    g = gap(M0, M1, stored={"A": {M0, M1}})
    verdict, answered = judge_gap(g, outcome(), NOW, max_attempts=5)
    assert (verdict.status, verdict.expected, verdict.filled, answered) == ("filled", 2, 2, False)
    assert g.attempts == 0


def test_minutes_with_live_ticks_are_not_expected() -> None:
    g = gap(M0, M1, ticks={"A": {M0}}, stored={"A": {M1}})
    verdict, _ = judge_gap(g, outcome(), NOW, max_attempts=5)
    assert (verdict.status, verdict.expected, verdict.filled) == ("filled", 1, 1)


def test_minutes_older_than_a_candle_of_the_answer_had_no_trades() -> None:
    g = gap(M0, M1, M2, stored={"A": {M2}})
    answer = Answer({M2: candle(M2)}, newest_intraday=M2)
    verdict, answered = judge_gap(g, outcome(answers={"A": answer}), NOW, max_attempts=5)
    assert (verdict.status, verdict.filled, verdict.no_trades, verdict.missing) == ("filled", 1, 2, 0)
    assert answered and g.attempts == 1 and "2 had no trades" in verdict.detail


def test_minutes_after_the_newest_candle_stay_pending_until_the_last_attempt() -> None:
    answer = Answer({M0: candle(M0)}, newest_intraday=M0)
    g = gap(M0, M1, M2, stored={"A": {M0}})
    verdict, _ = judge_gap(g, outcome(answers={"A": answer}), NOW, max_attempts=5)
    assert verdict.status == "pending" and "attempt 1 of 5" in verdict.detail and g.progress["done"] == []
    g = gap(M0, M1, M2, stored={"A": {M0}}, attempts=4)
    verdict, _ = judge_gap(g, outcome(answers={"A": answer}), NOW, max_attempts=5)
    assert (verdict.status, verdict.filled, verdict.missing) == ("partial", 1, 2)
    assert "still absent from Upstox's answers after 5 attempts" in verdict.detail


def test_an_instrument_not_fetched_keeps_the_gap_pending_and_says_why() -> None:
    g = gap(M0)
    verdict, answered = judge_gap(g, outcome(failed={"A": "candles failed: reset"}), NOW, max_attempts=5)
    assert verdict.status == "pending" and "(candles failed: reset)" in verdict.detail
    assert not answered and g.attempts == 0


def test_an_instrument_upstox_refuses_is_done_and_remembered() -> None:
    g = gap(M0, M1, keys=("A", "B"), stored={"A": set(), "B": {M0, M1}})
    verdict, answered = judge_gap(g, outcome(refused={"A": "candles answered 400"}), NOW, max_attempts=5)
    assert (verdict.status, verdict.filled, verdict.missing) == ("partial", 2, 2) and answered
    assert g.progress["refused"] == {"A": "candles answered 400"} and g.progress["refused_minutes"] == 2
    assert "Upstox refused A (candles answered 400): 2 instrument-minutes" in verdict.detail


def test_minutes_not_over_yet_keep_the_gap_pending() -> None:
    g = gap(M0, stored={"A": {M0}}, waiting=[M3])
    verdict, _ = judge_gap(g, outcome(), NOW, max_attempts=5)
    assert verdict.status == "pending" and "waiting for 1 instrument-minutes to end" in verdict.detail


def test_minutes_before_upstox_history_cannot_be_filled() -> None:
    old = datetime(2021, 6, 1, 4, 0, tzinfo=UTC)
    verdict, _ = judge_gap(gap(old), outcome(), NOW, max_attempts=5)
    assert verdict.status == "unfillable" and "older than Upstox's 1-minute history" in verdict.detail


def test_progress_carries_over_between_runs() -> None:
    first = gap(M0, M1, keys=("A", "B"), stored={"A": set(), "B": set()})
    judge_gap(first, outcome(refused={"A": "no"}, failed={"B": "reset"}), NOW, max_attempts=5)
    second = gap(M0, M1, keys=("A", "B"), stored={"A": set(), "B": {M0, M1}}, progress=first.progress)
    verdict, _ = judge_gap(second, outcome(), NOW, max_attempts=5)
    assert (verdict.status, verdict.filled, verdict.missing) == ("partial", 2, 2)
    assert second.progress["refused"] == {"A": "no"}
