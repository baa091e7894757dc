"""The backfill job: Upstox's 1-minute candles for the minutes gaps left without ticks.

One run:

1. loads the pending gaps of ``feed_gaps``, newest first, and for each the
   minutes of its instruments that have live ticks or a backfilled candle;
2. works out what each instrument still needs and plans the fewest requests
   (:mod:`collector.core.gaps`); an instrument whose every gap minute has ticks
   needs none;
3. sends them, newest gap first and at most ``max_requests_per_run`` of them
   (retries included), a few at a time, each through the collector's one
   REST limiter and the backfill's own stricter one (:data:`BACKFILL_LIMITS`),
   so that authorize calls always keep their share of Upstox's limits;
4. stores every candle Upstox had for a minute of a gap in
   ``candles_backfill`` (the minutes our ticks also cover included, for
   comparison);
5. judges each gap (:func:`collector.core.gaps.judge`) and writes its state.

A gap is done instrument by instrument (``fill_progress``), so a backlog
larger than one run's budget is worked off over several runs without asking
twice. 401/403 end the run (every request would fail alike) and count it as
failed; the gaps stay pending. Collectors sharing a database take turns: a
run that finds another one running (an advisory lock) skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from collector.core.gapfill import PendingGap, Result, judge_gap, sort_out
from collector.core.gaps import (
    FILL_STATUSES,
    HISTORY_START,
    MINUTE,
    Candle,
    CandleRequest,
    Verdict,
    gap_minutes,
    parse_candles,
    plan_requests,
)
from collector.core.ratelimit import RateLimiter
from collector.core.times import ist_day
from collector.db.connect import TRANSIENT_ERRORS
from collector.exceptions import UpstoxError
from collector.metrics import RestApi, SupervisorMetrics

__all__ = [
    "BACKFILL_LIMITS",
    "BACKFILL_LOCK_ID",
    "Backfill",
    "BackfillOptions",
    "BackfillReport",
    "CandleClient",
    "backfill_limiter",
]

logger = logging.getLogger(__name__)

# The backfill's share of Upstox's REST limits (50/s, 500/min, 2000/30 min):
# with authorize's own cap (2/s, 30/min, 300/30 min) both stay under the
# collector's one limiter (40/s, 450/min, 1800/30 min) without waiting on it.
BACKFILL_LIMITS = [(25, 1.0), (250, 60.0), (1200, 1800.0)]
BACKFILL_LOCK_ID = 0x62666C6C  # "bfll": one backfill at a time per database

_STORE_SQL = """
INSERT INTO candles_backfill AS b (bucket, instrument_key, open, high, low, close, volume, oi, source, fetched_at)
SELECT u.*, now() FROM unnest($1::timestamptz[], $2::text[], $3::float8[], $4::float8[], $5::float8[],
                             $6::float8[], $7::int8[], $8::float8[], $9::text[]) AS u
ON CONFLICT (instrument_key, bucket) DO UPDATE
SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, oi = excluded.oi, source = excluded.source, fetched_at = excluded.fetched_at
RETURNING (xmax = 0) AS inserted
"""
_UPDATE_SQL = """
UPDATE feed_gaps SET fill_status = $3, fill_detail = $4, minutes_expected = $5, minutes_filled = $6,
    minutes_no_trades = $7, fill_attempts = $8, last_fill_attempt_at = coalesce($9, last_fill_attempt_at),
    fill_progress = $10::jsonb
WHERE connection = $1 AND started_at = $2
"""


def backfill_limiter(clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    """The backfill's own limiter, used together with the collector's REST limiter."""
    return RateLimiter(BACKFILL_LIMITS, clock=clock)


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """How much one run does; seconds unless named otherwise."""

    max_requests_per_run: int = 250  # HTTP requests, retries included
    concurrency: int = 4  # requests in flight at once
    max_attempts: int = 5  # answers lacking a minute before it is given up
    max_gaps_per_run: int = 2000
    settle_s: float = 2.0  # a minute counts as over this long after its end


@dataclass(slots=True)
class BackfillReport:
    """What one run did."""

    gaps: int = 0
    requests: int = 0
    stored: int = 0  # candles newly stored
    states: Counter[str] = field(default_factory=Counter)  # the gaps' states after the run
    retry_at: datetime | None = None  # when a pending gap's last minute is over


class _Budget:
    def __init__(self, requests: int) -> None:
        self.left = requests
        self.sent = 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        self.sent += 1
        return True


class CandleClient(Protocol):
    """What the backfill needs of Upstox's REST client (the supervisor's UpstoxRest): its shared
    limiter, and a JSON GET with retries. Named here so that db/ never imports the supervisor."""

    rest: RateLimiter

    async def get_json(
        self,
        path: str,
        api: RestApi,
        *,
        limiters: Sequence[RateLimiter] = (),
        allow: Callable[[], bool] = ...,
    ) -> Any: ...


class Backfill:
    """Fills pending gaps from Upstox's candle APIs (one run at a time)."""

    def __init__(
        self,
        rest: CandleClient,
        *,
        limiter: RateLimiter | None = None,
        metrics: SupervisorMetrics | None = None,
        options: BackfillOptions | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._rest = rest
        self._limiter = limiter or backfill_limiter(rest.rest.clock)
        self._metrics = metrics
        self.options = options or BackfillOptions()
        self._now = now

    async def run(self, conn: asyncpg.Connection) -> BackfillReport:
        """One run over the pending gaps; raises the token's error after recording what it did."""
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", BACKFILL_LOCK_ID):
            logger.info("backfill: another collector's backfill is running; skipped")
            return BackfillReport()
        try:
            return await self._run(conn)
        finally:
            # A connection broken mid-run releases the lock as it closes.
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await conn.execute("SELECT pg_advisory_unlock($1)", BACKFILL_LOCK_ID)

    async def _run(self, conn: asyncpg.Connection) -> BackfillReport:
        now = self._now()
        today = ist_day(now)
        gaps = await self._load(conn, now)
        report = BackfillReport(gaps=len(gaps))
        needs: dict[str, set[datetime]] = {}
        newest: dict[str, int] = {}  # instrument -> the newest gap that needs it
        for index, gap in enumerate(gaps):
            done = gap.done
            for key in gap.instruments:
                if key in done:
                    continue
                missing = {m for m in gap.without_ticks(key) - gap.stored[key] if ist_day(m) >= HISTORY_START}
                if missing:
                    needs.setdefault(key, set()).update(missing)
                    newest.setdefault(key, index)
        requests = sorted(plan_requests(needs, today), key=lambda r: (newest[r.instrument_key], r))
        budget = _Budget(self.options.max_requests_per_run)
        results, fatal = await self._fetch(requests, budget)
        report.requests = budget.sent
        outcome = sort_out(requests, results)
        report.stored = await self._store(conn, gaps, outcome.rows)
        for gap in gaps:
            verdict, answered = judge_gap(gap, outcome, now, max_attempts=self.options.max_attempts)
            await self._record(conn, gap, verdict, answered, now)
            report.states[verdict.status] += 1
            if verdict.status == "pending" and gap.waiting:
                due = gap.waiting[0] + MINUTE + timedelta(seconds=self.options.settle_s)
                report.retry_at = min(report.retry_at or due, due)
        await self._publish(conn)
        if report.requests or report.states["pending"] != report.gaps:
            logger.info(
                "backfill: %d gaps, %d requests, %d candles stored; now %s",
                report.gaps, report.requests, report.stored,
                ", ".join(f"{n} {state}" for state, n in sorted(report.states.items())) or "nothing pending",
            )  # fmt: skip
        if fatal is not None:
            raise fatal
        return report

    # -- loading ------------------------------------------------------------------------

    async def _load(self, conn: asyncpg.Connection, now: datetime) -> list[PendingGap]:
        rows = await conn.fetch(
            "SELECT connection, started_at, ended_at, instruments, fill_attempts, fill_progress::text AS progress "
            "FROM feed_gaps WHERE fill_status = 'pending' ORDER BY ended_at DESC LIMIT $1",
            self.options.max_gaps_per_run,
        )
        settle = timedelta(seconds=self.options.settle_s)
        gaps = []
        for r in rows:
            gap = PendingGap(
                r["connection"], r["started_at"], r["ended_at"], list(r["instruments"]),
                r["fill_attempts"], json.loads(r["progress"]),
            )  # fmt: skip
            for m in gap_minutes(gap.started_at, gap.ended_at):
                if m + MINUTE + settle <= now:
                    gap.complete.add(m)
                else:
                    gap.waiting.append(m)
            gap.ticks = {k: set() for k in gap.instruments}
            gap.stored = {k: set() for k in gap.instruments}
            if gap.complete and gap.instruments:
                lo, hi = min(gap.complete), max(gap.complete) + MINUTE
                for t in await conn.fetch(
                    "SELECT instrument_key, time_bucket(INTERVAL '1 minute', time) AS m FROM ticks "
                    "WHERE instrument_key = ANY($1::text[]) AND time >= $2 AND time < $3 AND NOT snapshot "
                    "GROUP BY 1, 2",
                    gap.instruments, lo, hi,
                ):  # fmt: skip
                    gap.ticks[t["instrument_key"]].add(t["m"])
                for b in await conn.fetch(
                    "SELECT instrument_key, bucket FROM candles_backfill "
                    "WHERE instrument_key = ANY($1::text[]) AND bucket >= $2 AND bucket < $3",
                    gap.instruments, lo, hi,
                ):  # fmt: skip
                    gap.stored[b["instrument_key"]].add(b["bucket"])
            gaps.append(gap)
        return gaps

    # -- fetching -----------------------------------------------------------------------

    async def _fetch(
        self, requests: Sequence[CandleRequest], budget: _Budget
    ) -> tuple[dict[CandleRequest, Result], UpstoxError | None]:
        results: dict[CandleRequest, Result] = {}
        queue = iter(requests)
        fatal: list[UpstoxError] = []

        async def worker() -> None:
            for request in queue:  # shared: each request is taken by one worker
                if fatal:
                    results[request] = f"stopped: {fatal[0]}"
                    continue
                if not budget.take():
                    results[request] = "this run's request budget is spent"
                    continue
                try:
                    payload = await self._rest.get_json(
                        request.path, "candles", limiters=[self._limiter], allow=budget.take
                    )
                    results[request] = parse_candles(payload)
                except UpstoxError as exc:
                    if exc.credentials:  # every request would fail alike: end the run
                        fatal.append(exc)
                    results[request] = exc
                except ValueError as exc:
                    results[request] = f"candles answered {exc}"

        await asyncio.gather(*(worker() for _ in range(max(1, self.options.concurrency))))
        if fatal:
            logger.error("backfill stopped: %s", fatal[0])
        return results, (fatal[0] if fatal else None)

    # -- storing and judging ------------------------------------------------------------

    async def _store(
        self,
        conn: asyncpg.Connection,
        gaps: Sequence[PendingGap],
        rows: dict[tuple[str, datetime], tuple[Candle, str]],
    ) -> int:
        wanted: dict[str, set[datetime]] = {}
        for gap in gaps:
            for key in gap.instruments:
                wanted.setdefault(key, set()).update(gap.complete)
        keep = [
            (key, c, source) for (key, bucket), (c, source) in rows.items() if bucket in wanted.get(key, ())
        ]
        if not keep:
            return 0
        columns = (
            [c.bucket for _, c, _ in keep], [k for k, _, _ in keep], [c.open for _, c, _ in keep],
            [c.high for _, c, _ in keep], [c.low for _, c, _ in keep], [c.close for _, c, _ in keep],
            [c.volume for _, c, _ in keep], [c.oi for _, c, _ in keep], [s for _, _, s in keep],
        )  # fmt: skip
        inserted = sum(1 for r in await conn.fetch(_STORE_SQL, *columns) if r["inserted"])
        by_key: dict[str, set[datetime]] = {}
        for key, c, _ in keep:
            by_key.setdefault(key, set()).add(c.bucket)
        for gap in gaps:
            for key in gap.instruments:
                if key in by_key:
                    gap.stored[key] |= by_key[key] & gap.complete
        if self._metrics is not None:
            self._metrics.backfill_candles.inc(inserted)
        return inserted

    @staticmethod
    async def _record(
        conn: asyncpg.Connection, gap: PendingGap, verdict: Verdict, answered: bool, now: datetime
    ) -> None:
        await conn.execute(
            _UPDATE_SQL, gap.connection, gap.started_at, verdict.status, verdict.detail[:2000], verdict.expected,
            verdict.filled, verdict.no_trades, gap.attempts, now if answered else None, json.dumps(gap.progress),
        )  # fmt: skip

    async def _publish(self, conn: asyncpg.Connection) -> None:
        """Gap states and the backlog, as metrics."""
        if self._metrics is None:
            return
        m = self._metrics
        counts = {r["fill_status"]: r["n"] for r in await conn.fetch(
            "SELECT fill_status, count(*) AS n FROM feed_gaps GROUP BY 1"
        )}  # fmt: skip
        for status in FILL_STATUSES:
            m.gaps.labels(status).set(counts.get(status, 0))
        row = await conn.fetchrow(
            "SELECT min(ended_at) AS oldest, coalesce(sum(greatest(coalesce(minutes_expected, 0) - minutes_filled "
            "- minutes_no_trades, 0)), 0) AS minutes FROM feed_gaps WHERE fill_status = 'pending'"
        )
        m.gap_oldest_pending.set(row["oldest"].timestamp() if row["oldest"] else 0)
        m.backfill_pending_candles.set(row["minutes"])
