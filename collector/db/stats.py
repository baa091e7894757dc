"""What the database does on its own: TimescaleDB's jobs and the storage they keep in shape.

Candles look right even when every TimescaleDB job fails (real-time aggregation
reads the raw ticks), so nothing in the data path notices a broken job runner:
the materialised candles stop advancing, chunks are never converted to the
columnstore, retention never drops anything, and the disk fills at the
uncompressed rate. This module reads what the database itself records about
that (``timescaledb_information.jobs`` and ``job_stats``, TimescaleDB's job
statistics table for consecutive failures, chunk and size functions), in one
short read-only transaction with a statement timeout; the supervisor exports
it on each scrape (:mod:`collector.supervisor.scrape`).

Every query is read-only and allowed to the collector's own role
(``collector_writer``): the supervisor reads with the DSN it runs with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

__all__ = ["DatabaseStats", "JobStats", "RelationStats", "read_stats"]

logger = logging.getLogger(__name__)

# The relations whose storage is exported: the ticks, and each candle level.
RELATIONS = ("ticks", "candles_1m", "candles_5m", "candles_15m", "candles_1h", "candles_1d")

_JOBS_SQL = """
SELECT j.job_id, j.proc_name, coalesce(j.hypertable_name, '') AS relation,
       extract(epoch FROM j.schedule_interval)::float8 AS interval_s,
       s.total_runs, s.total_failures, s.last_run_status, s.next_start
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s USING (job_id)
WHERE j.scheduled
  -- The Apache-licensed build schedules TimescaleDB's job-history retention although its
  -- license refuses to run it: a job that can never succeed there, and not ours.
  AND NOT (current_setting('timescaledb.license', true) = 'apache'
           AND j.proc_schema = '_timescaledb_functions' AND j.proc_name <> 'policy_telemetry')
ORDER BY j.job_id
"""
# Consecutive failures and the last success are kept by TimescaleDB's scheduler in its
# internal statistics table (the information views do not show them); read apart, so that a
# version without the table still exports the rest.
_JOB_DETAIL_SQL = """
SELECT job_id, last_successful_finish, consecutive_failures
FROM _timescaledb_internal.bgw_job_stat
"""
# Where candles are continuous aggregates their rows live in a materialisation hypertable;
# on the Apache build each level is a hypertable of its own name.
_HYPERTABLES_SQL = """
SELECT r.name AS relation,
       CASE WHEN ca.view_name IS NOT NULL
            THEN format('%I.%I', ca.materialization_hypertable_schema, ca.materialization_hypertable_name)
            ELSE format('%I.%I', h.hypertable_schema, h.hypertable_name) END AS hypertable,
       coalesce(ca.materialization_hypertable_name, h.hypertable_name) AS hypertable_name
FROM unnest($1::text[]) AS r(name)
LEFT JOIN timescaledb_information.continuous_aggregates ca ON ca.view_name = r.name
LEFT JOIN timescaledb_information.hypertables h ON h.hypertable_name = r.name
WHERE ca.view_name IS NOT NULL OR h.hypertable_name IS NOT NULL
"""
_CHUNKS_SQL = """
SELECT hypertable_name, count(*) AS chunks, count(*) FILTER (WHERE is_compressed) AS compressed,
       min(range_start) AS oldest_start, min(range_end) AS oldest_end
FROM timescaledb_information.chunks
WHERE hypertable_name = ANY($1::text[])
GROUP BY 1
"""
_INTERVAL_SQL = """
SELECT hypertable_name, extract(epoch FROM time_interval)::float8 AS interval_s
FROM timescaledb_information.dimensions
WHERE hypertable_name = ANY($1::text[]) AND dimension_number = 1
"""
_RETENTION_SQL = """
SELECT hypertable_name, (config->>'drop_after')::interval AS drop_after
FROM timescaledb_information.jobs
WHERE proc_name = 'policy_retention'  -- paused too: what it should keep is still the rule
"""


@dataclass(frozen=True, slots=True)
class JobStats:
    """One scheduled TimescaleDB job, as its scheduler records it."""

    job_id: int
    proc: str
    relation: str
    interval_s: float
    runs: int
    failures: int
    last_run_success: bool | None  # None: it has not run yet
    consecutive_failures: int
    last_success: datetime | None
    next_start: datetime | None


@dataclass(frozen=True, slots=True)
class RelationStats:
    """Storage of one relation (the ticks, or a candle level)."""

    relation: str
    total_bytes: int
    chunks: int
    compressed_chunks: int
    oldest_chunk_start: datetime | None
    oldest_chunk_end: datetime | None
    chunk_interval_s: float | None
    # Converted chunks only: their size before and after conversion (TimescaleDB's columnstore stats).
    columnstore_before_bytes: int | None = None
    columnstore_after_bytes: int | None = None


@dataclass(slots=True)
class DatabaseStats:
    """Everything :func:`read_stats` found; ``jobs`` is empty where the server has no job scheduler."""

    jobs: list[JobStats] = field(default_factory=list)
    relations: list[RelationStats] = field(default_factory=list)
    retention: dict[str, timedelta] = field(default_factory=dict)  # relation -> drop_after


async def read_stats(conn: asyncpg.Connection, *, timeout_s: float) -> DatabaseStats:
    """Read the jobs and the storage, read-only, each statement within ``timeout_s``."""
    stats = DatabaseStats()
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000)}")
        stats.jobs = await _jobs(conn)
        stats.relations = await _relations(conn)
        if stats.jobs:
            for row in await conn.fetch(_RETENTION_SQL):
                stats.retention[row["hypertable_name"]] = row["drop_after"]
    return stats


async def _jobs(conn: asyncpg.Connection) -> list[JobStats]:
    try:
        async with conn.transaction():  # a savepoint: a server without the views keeps going
            rows = await conn.fetch(_JOBS_SQL)
    except asyncpg.UndefinedTableError:
        return []
    detail: dict[int, asyncpg.Record] = {}
    try:
        async with conn.transaction():
            detail = {r["job_id"]: r for r in await conn.fetch(_JOB_DETAIL_SQL)}
    except (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError) as exc:
        logger.debug("TimescaleDB job statistics table not readable: %s", exc)
    out = []
    for r in rows:
        d = detail.get(r["job_id"])
        status = r["last_run_status"]
        out.append(
            JobStats(
                job_id=r["job_id"], proc=r["proc_name"], relation=r["relation"], interval_s=r["interval_s"],
                runs=r["total_runs"] or 0, failures=r["total_failures"] or 0,
                last_run_success=None if status in (None, "Running") else status == "Success",
                consecutive_failures=(d["consecutive_failures"] if d else 0) or 0,
                last_success=_when(d["last_successful_finish"]) if d else None,
                next_start=_when(r["next_start"]),
            )
        )  # fmt: skip
    return out


def _when(t: datetime | None) -> datetime | None:
    # The scheduler writes -infinity for "never" (and infinity for "not scheduled"); asyncpg reads
    # them as datetime.min and datetime.max, which are no instants.
    if t is None or t.tzinfo is None or t.year <= 1 or t.year >= 9999:
        return None
    return t


async def _relations(conn: asyncpg.Connection) -> list[RelationStats]:
    hypertables = await conn.fetch(_HYPERTABLES_SQL, list(RELATIONS))
    names = [r["hypertable_name"] for r in hypertables]
    chunks = {r["hypertable_name"]: r for r in await conn.fetch(_CHUNKS_SQL, names)}
    intervals = {r["hypertable_name"]: r["interval_s"] for r in await conn.fetch(_INTERVAL_SQL, names)}
    out = []
    for r in hypertables:
        name = r["hypertable_name"]
        c = chunks.get(name)
        size = await conn.fetchval("SELECT hypertable_size($1::regclass)", r["hypertable"])
        before = after = None
        if c is not None and c["compressed"]:
            row = await conn.fetchrow(
                "SELECT sum(before_compression_total_bytes) AS before, sum(after_compression_total_bytes) AS after "
                "FROM hypertable_compression_stats($1::regclass)",
                r["hypertable"],
            )
            before, after = row["before"], row["after"]
        out.append(
            RelationStats(
                relation=r["relation"], total_bytes=size or 0,
                chunks=c["chunks"] if c else 0, compressed_chunks=c["compressed"] if c else 0,
                oldest_chunk_start=_when(c["oldest_start"]) if c else None,
                oldest_chunk_end=_when(c["oldest_end"]) if c else None,
                chunk_interval_s=intervals.get(name),
                columnstore_before_bytes=int(before) if before is not None else None,
                columnstore_after_bytes=int(after) if after is not None else None,
            )
        )  # fmt: skip
    return out
