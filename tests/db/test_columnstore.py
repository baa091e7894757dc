"""The production storage path: the columnstore, late rows into it, and the policies `collector migrate` sets.

Where TimescaleDB has the columnstore (TSL) a day-old chunk of ticks is
converted and must answer the documented queries (docs/data.md) exactly as before, and a
journal replay of that day must insert into it. The Apache build has no
columnstore: the same replay and queries run on the row store, and the
columnstore API must refuse (so the migrations were right not to use it).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.db.jobs import LEVELS, candles_mode
from tests.support.candles import WIDTHS, expected, generate_day, ingest, refresh, session
from tests.support.db import connection, login
from tests.support.docs import DATA_DOC

# The documented queries (docs/data.md), and the ones Grafana's dashboards make, for one instrument of the day.
QUERIES = {
    "latest ticks": "SELECT time, ltp, ltq, vtt FROM ticks WHERE instrument_key = 'NSE_FO|1' "
    "ORDER BY time DESC LIMIT 20",
    "day of one instrument": "SELECT time, ltp, ltq, volume, vtt, snapshot FROM ticks "
    "WHERE instrument_key = 'NSE_FO|2' AND time >= $1 AND time < $2 ORDER BY time",
    "latest per instrument": "SELECT DISTINCT ON (instrument_key) instrument_key, time, ltp FROM ticks "
    "WHERE time >= $1 ORDER BY instrument_key, time DESC",
    "count and volume": "SELECT instrument_key, count(*), sum(volume), min(ltp), max(ltp) FROM ticks "
    "GROUP BY 1 ORDER BY 1",
    "5-minute candles": "SELECT * FROM candles_5m WHERE instrument_key = 'NSE_FO|3' "
    "AND bucket >= $1 AND bucket < $2 ORDER BY bucket",
}
# Where continuous aggregates exist: level -> (start_offset, end_offset, schedule_interval), as 003 sets
# them and docs/data.md documents them.
REFRESH_POLICIES = {
    "candles_1m": ("3 days", "00:01:00", timedelta(minutes=1)),
    "candles_5m": ("3 days", "00:05:00", timedelta(minutes=5)),
    "candles_15m": ("3 days", "00:15:00", timedelta(minutes=15)),
    "candles_1h": ("7 days", "01:00:00", timedelta(minutes=30)),
    "candles_1d": ("30 days", "1 day", timedelta(hours=1)),
}


async def answers(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict[str, list[Any]]:
    out = {}
    for name, sql in QUERIES.items():
        args = (start, end)[: sql.count("$")]
        out[name] = [tuple(r) for r in await conn.fetch(sql, *args)]
    return out


async def ticks_chunk(conn: asyncpg.Connection, t: datetime) -> tuple[str, bool]:
    row = await conn.fetchrow(
        "SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, is_compressed "
        "FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'ticks' AND range_start <= $1 AND range_end > $1",
        t,
    )
    assert row is not None, "no chunk holds the day"
    return row["chunk"], row["is_compressed"]


async def test_a_day_old_chunk_in_the_columnstore_answers_the_same_and_takes_late_rows(
    migrated: str, tmp_path: Path
) -> None:
    day = datetime.now(UTC).date() - timedelta(days=1)
    opens, closes = session(day)
    start, end = opens - timedelta(hours=1), closes + timedelta(hours=1)  # the day's ticks, with a margin
    frames, kept = generate_day(day, seed=7)
    noon = len(frames) // 2
    async with connection(migrated) as conn:
        columnstore = await candles_mode(conn) == "continuous_aggregates"
        async with login(migrated, "collector_writer") as writer:
            await ingest(writer, tmp_path / "live", frames[noon:])  # the afternoon, live
            await refresh(writer, migrated)
            before = await answers(conn, start, end)
            assert all(before.values()), before  # every query has something to show
            chunk, compressed = await ticks_chunk(conn, start)
            assert not compressed  # a day old: the policy converts after 2 days
            if columnstore:
                await conn.execute("CALL convert_to_columnstore($1::regclass)", chunk)
                assert (await ticks_chunk(conn, start))[1]
                stats = await conn.fetchrow(
                    "SELECT before_compression_total_bytes, after_compression_total_bytes "
                    "FROM chunk_columnstore_stats('ticks') WHERE format('%I.%I', chunk_schema, chunk_name) = $1",
                    chunk,
                )
                assert stats["after_compression_total_bytes"] > 0
            else:
                with pytest.raises(asyncpg.PostgresError, match=r"(?i)license|not supported"):
                    await conn.execute("CALL convert_to_columnstore($1::regclass)", chunk)
            assert await answers(conn, start, end) == before

            # The morning, replayed from another connection's journal, as the collector's login.
            await ingest(writer, tmp_path / "replay", frames[:noon])
            await refresh(writer, migrated)
        assert await conn.fetchval(f"SELECT count(*) FROM {chunk}") == len(kept)
        after = await answers(conn, start, end)
        day_rows = [t for t in kept if t.instrument_key == "NSE_FO|2"]
        assert [r[:3] for r in after["day of one instrument"]] == [(t.time, t.ltp, t.ltq) for t in day_rows]
        assert after["latest ticks"] == before["latest ticks"]  # the replay is older than the afternoon
        assert sum(r[1] for r in after["count and volume"]) == len(kept)
        for level, width in WIDTHS.items():
            got = {(r["bucket"], r["instrument_key"]): (*tuple(r)[2:6], r["ticks"]) for r in await conn.fetch(
                f"SELECT * FROM {level}")}  # fmt: skip
            assert got == {k: (*v[:4], v[5]) for k, v in expected(kept, width).items()}, level
        if columnstore:
            # Still in the columnstore with the late rows beside it; converting again takes them in.
            assert (await ticks_chunk(conn, start))[1]
            await conn.execute("CALL convert_to_columnstore($1::regclass, recompress => true)", chunk)
            assert await answers(conn, start, end) == after
            assert await conn.fetchval(f"SELECT count(*) FROM ONLY {chunk}") == 0  # all of it columnar


def collector_migrate(dsn: str, retention_days: int | None, cwd: Path) -> str:
    """Run `collector migrate` as users do (in ``cwd``, so no stray .env is read); return what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["COLLECTOR_DATABASE_URL"] = dsn
    if retention_days is not None:
        env["COLLECTOR_RETENTION_DAYS"] = str(retention_days)
    result = subprocess.run(
        [sys.executable, "-m", "collector", "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


async def jobs(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT job_id, proc_name, hypertable_name, schedule_interval, config::jsonb AS config, owner, scheduled "
            "FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY job_id"
        )
    )


async def test_policies_exist_with_the_documented_settings(database: str, tmp_path: Path) -> None:
    assert "applied" in collector_migrate(database, 30, tmp_path)
    async with connection(database) as conn:
        found = await jobs(conn)
        if await candles_mode(conn) == "scheduled_refresh":
            assert found == []  # the Apache build: the collector's scheduler does this work
            assert "up to date" in collector_migrate(database, None, tmp_path)
            return
        import json

        by_proc: dict[str, list[asyncpg.Record]] = {}
        for job in found:
            by_proc.setdefault(job["proc_name"], []).append(job)
            assert job["scheduled"] and job["owner"] == "postgres", job
        refresh_jobs = {j["hypertable_name"]: j for j in by_proc.pop("policy_refresh_continuous_aggregate")}
        assert set(refresh_jobs) == set(LEVELS)
        for level, (start_offset, end_offset, every) in REFRESH_POLICIES.items():
            config = json.loads(refresh_jobs[level]["config"])
            assert (config["start_offset"], config["end_offset"]) == (start_offset, end_offset), level
            assert refresh_jobs[level]["schedule_interval"] == every, level
        [columnstore] = by_proc.pop("policy_compression")
        assert columnstore["hypertable_name"] == "ticks"
        assert json.loads(columnstore["config"])["compress_after"] == "2 days"
        settings = await conn.fetchrow(
            "SELECT segmentby, orderby FROM timescaledb_information.hypertable_columnstore_settings "
            "WHERE hypertable = 'ticks'::regclass"
        )
        assert tuple(settings) == ("instrument_key", '"time" DESC')
        [retention] = by_proc.pop("policy_retention")
        assert retention["hypertable_name"] == "ticks"
        assert json.loads(retention["config"])["drop_after"] == "30 days"
        [late] = by_proc.pop("collector_refresh_late_candles")
        assert late["schedule_interval"] == timedelta(minutes=1)
        assert by_proc == {}, by_proc

        # COLLECTOR_RETENTION_DAYS changed, then unset: the policy follows.
        collector_migrate(database, 7, tmp_path)
        [retention] = [j for j in await jobs(conn) if j["proc_name"] == "policy_retention"]
        assert json.loads(retention["config"])["drop_after"] == "7 days"
        assert "up to date" in collector_migrate(database, None, tmp_path)
        assert [j for j in await jobs(conn) if j["proc_name"] == "policy_retention"] == []

        # The late-candle job runs by itself in the background, as the owner.
        t = datetime.now(UTC) - timedelta(days=40)
        await conn.execute(
            "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp) "
            "VALUES ($1, 'NSE_EQ|X', 'ltpc', false, $1, $1, 7.5)",
            t,
        )
        await conn.execute("INSERT INTO candle_refresh_requests (since) VALUES ($1)", t)
        await conn.execute("SELECT alter_job($1, next_start => now())", late["job_id"])
        deadline = time.monotonic() + 150
        while await conn.fetchval("SELECT count(*) FROM candle_refresh_requests"):
            assert time.monotonic() < deadline, "the background job did not run (TimescaleDB scheduler)"
            await asyncio.sleep(0.5)
        for level in LEVELS:
            assert await conn.fetchval(f"SELECT sum(ticks) FROM {level}") == 1, level


def test_the_docs_document_these_policies() -> None:
    text = DATA_DOC.read_text()
    section = text.split("### Policies with the Timescale License code", 1)[1].split("\n## ", 1)[0]
    for level, (start_offset, end_offset, every) in REFRESH_POLICIES.items():
        pattern = rf"\| `{level}` \| {re.escape(_human(start_offset))} \| {re.escape(_human(end_offset))} \| "
        pattern += rf"{re.escape(_human(every))} \|"
        assert re.search(pattern, section), f"{DATA_DOC.name}, policies: no row for {level}"
    assert "after 2 days" in section and "`COLLECTOR_RETENTION_DAYS`" in section


def _human(value: str | timedelta) -> str:
    """'3 days', '00:05:00' or timedelta(minutes=5) as the docs write it: '3 days', '5 minutes'."""
    if isinstance(value, str) and ":" not in value:
        return value
    if isinstance(value, str):
        h, m, _ = (int(x) for x in value.split(":"))
        seconds = h * 3600 + m * 60
    else:
        seconds = int(value.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    raise ValueError(value)
