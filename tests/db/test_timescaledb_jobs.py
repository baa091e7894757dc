"""TimescaleDB's own jobs run, and do their work: run by the background worker, not by hand.

With the Timescale License code, ``collector migrate`` leaves eight jobs to the
database: the five candle refresh policies, the columnstore policy, the
retention policy and ``collector_refresh_late_candles``. Candles look right
even when every one of them fails (real-time aggregation reads the raw ticks),
so only running them shows they work. Each is made due at once and left to
TimescaleDB's scheduler (``CALL run_job()`` takes another code path, which
PostgreSQL 17.12 does not break): each must succeed, and its effect must be
visible. On PostgreSQL 17.12 all eight fail without our patch on TimescaleDB
2.29.2's job runner (deploy/timescaledb/patches/).

The Apache-licensed build has no policies: there the collector's own jobs do
that work (tests of the jobs), and migrate must leave no job of ours to a
scheduler that could not run it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from collector.db.jobs import apply_retention_policy, candles_mode
from collector.db.stats import read_stats

RETENTION_DAYS = 7
OURS = 1000  # TimescaleDB numbers user jobs and policies from 1000 on


async def jobs_of(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT job_id, proc_name, hypertable_name FROM timescaledb_information.jobs WHERE job_id >= $1",
        OURS,
    )
    return {r["job_id"]: r for r in rows}


async def runs(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT job_id, total_runs, total_failures, last_run_status FROM timescaledb_information.job_stats"
    )
    return {r["job_id"]: r for r in rows}


async def last_error(conn: asyncpg.Connection, job_id: int) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT err_message FROM timescaledb_information.job_errors WHERE job_id = $1 "
        "ORDER BY finish_time DESC LIMIT 1",
        job_id,
    )


async def ran(conn: asyncpg.Connection, job_id: int, before: asyncpg.Record | None) -> asyncpg.Record:
    """Wait until the scheduler has run ``job_id`` once more than ``before``; its stats then."""
    deadline = time.monotonic() + 60
    while True:
        now = (await runs(conn)).get(job_id)
        if (
            now is not None
            and (now["total_runs"] or 0) > ((before["total_runs"] or 0) if before else 0)
            and now["last_run_status"] in ("Success", "Failed")
        ):
            return now
        assert time.monotonic() < deadline, f"job {job_id} not run by the scheduler within 60 s"
        await asyncio.sleep(0.2)


async def tick(conn: asyncpg.Connection, t: datetime, ltp: float) -> None:
    await conn.execute(
        "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp, ltq, vtt) "
        "VALUES ($1, 'NSE_EQ|INE002A01018', 'ltpc', false, $1, $1, $2, 1, 1)",
        t,
        ltp,
    )


async def materialized(conn: asyncpg.Connection, level: str, bucket: datetime) -> bool:
    """Whether ``level`` holds ``bucket`` in its materialisation (real-time aggregation off)."""
    table = await conn.fetchval(
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
        level,
    )
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE bucket = $1)", bucket))


async def test_every_job_migrate_creates_is_run_by_the_scheduler_and_does_its_work(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        if await candles_mode(conn) != "continuous_aggregates":
            await apply_retention_policy(conn, RETENTION_DAYS)
            assert await jobs_of(conn) == {}, (
                "the Apache build must leave no job of ours to TimescaleDB's scheduler"
            )
            return
        now = datetime.now(UTC)
        recent = (now - timedelta(minutes=10)).replace(second=0, microsecond=0)
        late = (now - timedelta(days=5)).replace(minute=0, second=0, microsecond=0)  # past 3 days: late
        old = now - timedelta(days=RETENTION_DAYS + 3)
        for i, t in enumerate((recent, late, old)):
            await tick(conn, t + timedelta(seconds=1), 100.0 + i)
        # What the collector's candle job hands over for late ticks (tests of the jobs show it does).
        await conn.execute("INSERT INTO candle_refresh_requests (since) VALUES ($1)", late)
        chunks_before = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'ticks'"
        )
        assert chunks_before == 3
        await apply_retention_policy(conn, RETENTION_DAYS)  # as `collector migrate` does with the setting
        jobs = await jobs_of(conn)
        assert sorted((j["proc_name"], j["hypertable_name"]) for j in jobs.values()) == sorted(
            [
                ("policy_refresh_continuous_aggregate", f"candles_{level}")
                for level in ("1m", "5m", "15m", "1h", "1d")
            ]
            + [
                ("policy_compression", "ticks"),
                ("policy_retention", "ticks"),
                ("collector_refresh_late_candles", None),
            ]
        )
        before = await runs(conn)

        for job_id in jobs:
            await conn.execute("SELECT alter_job($1, next_start => now())", job_id)
        # Made due together, jobs that touch one relation can conflict (a refresh policy and the late
        # candles job refreshing one continuous aggregate; retention and the columnstore on one
        # hypertable): TimescaleDB lets one of them fail, and its scheduler runs it again later.
        # Here such a job is made due again at once, twice at most.
        after: dict[int, asyncpg.Record] = {}
        for job_id in jobs:
            for _attempt in range(3):
                after[job_id] = await ran(conn, job_id, before.get(job_id))
                error = (
                    await last_error(conn, job_id) if after[job_id]["last_run_status"] != "Success" else None
                )
                if error is None or not any(m in error for m in ("concurrent refresh", "deadlock")):
                    break
                before[job_id] = after[job_id]
                await conn.execute("SELECT alter_job($1, next_start => now())", job_id)
        failed = {
            f"{jobs[j]['proc_name']} {jobs[j]['hypertable_name'] or ''}": await last_error(conn, j)
            for j in jobs
            if after[j]["last_run_status"] != "Success"
        }
        assert failed == {}, f"TimescaleDB jobs failed: {failed}"

        # Each did its work. The refresh policies: the recent minute is materialised in every level
        # its window reaches (1m, 5m and 15m: their buckets are over; the hour and day are not).
        for level, width in (("candles_1m", 1), ("candles_5m", 5), ("candles_15m", 15)):
            bucket = recent - timedelta(minutes=recent.minute % width)
            assert await materialized(conn, level, bucket), f"{level} did not materialise {bucket}"
        # The late candles job: the five-day-old hour, below every refresh window but 1h's, in every level.
        assert await conn.fetchval("SELECT count(*) FROM candle_refresh_requests") == 0
        assert await materialized(conn, "candles_1m", late)
        assert await materialized(conn, "candles_1h", late)
        # The columnstore: the five-day-old chunk is converted; today's is not.
        chunks = {
            r["range_start"]: r["is_compressed"]
            for r in await conn.fetch(
                "SELECT range_start, is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'ticks'"
            )
        }
        day = timedelta(days=1)
        assert chunks.get(datetime.combine(late.date(), datetime.min.time(), UTC)) is True
        assert chunks.get(datetime.combine(recent.date(), datetime.min.time(), UTC)) is False
        # Retention: the chunk older than RETENTION_DAYS is gone, and only it.
        assert len(chunks) == 2 and min(chunks) > old - day

        # What the supervisor exports reads the same: every job succeeded, none failing.
        stats = await read_stats(conn, timeout_s=5)
        ours = {j.job_id: j for j in stats.jobs if j.job_id >= OURS}
        assert set(ours) == set(jobs)
        assert all(
            j.last_run_success and j.consecutive_failures == 0 and j.last_success for j in ours.values()
        )
        ticks = next(r for r in stats.relations if r.relation == "ticks")
        assert ticks.chunks == 2 and ticks.compressed_chunks == 1 and ticks.total_bytes > 0
        assert ticks.columnstore_before_bytes and ticks.columnstore_after_bytes
        assert stats.retention == {"ticks": timedelta(days=RETENTION_DAYS)}
    finally:
        await conn.close()
