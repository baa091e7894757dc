"""``collector export`` as users run it: real processes, a real TimescaleDB, files read back by three readers.

The data: ticks of every kind (NULL where a kind has no field, depth arrays of
5 and 30 levels) spread over trading days, with exchange bars, status changes
and gaps (tests.support.recorded.synthetic). Every file is compared with the database
row for row and column for column through pyarrow; DuckDB and polars read the
Hive layout with the types it promises.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector.core.times import IST
from tests.support.db import execute
from tests.support.exported import database_rows, expect_equal, file_rows, parts, run_export, start_export
from tests.support.recorded import refresh_candles, synthetic

FIRST = date(2026, 11, 23)  # a Monday


async def test_types_are_exact_and_three_readers_read_the_layout(
    single_migrated: str, tmp_path: Path
) -> None:
    await synthetic(single_migrated, FIRST, 2, 3000)
    await refresh_candles(single_migrated)  # the Apache build's candles are tables the collector refreshes
    out = tmp_path / "out"
    result = run_export(
        single_migrated, "--from", "2026-11-23", "--to", "2026-11-24", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert await expect_equal(single_migrated, out, [FIRST, FIRST + timedelta(days=1)]) == 10
    ticks = pq.ParquetFile(out / "table=ticks" / "day=2026-11-23" / "part-0.parquet")
    schema = ticks.schema_arrow
    assert schema.field("time").type == pa.timestamp("us", tz="UTC") and not schema.field("time").nullable
    assert schema.field("received_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("bid_prices").type == pa.list_(pa.float64())
    assert schema.field("bid_qtys").type == pa.list_(pa.int64())
    assert schema.field("ltq").type == pa.int64() and schema.field("ltq").nullable
    assert ticks.metadata.row_group(0).column(0).compression == "ZSTD"
    rows = ticks.read().to_pylist()
    ltpc = next(r for r in rows if r["kind"] == "ltpc")
    assert ltpc["bid_prices"] is None and ltpc["vtt"] is None and ltpc["ltq"] is not None
    assert {len(r["bid_prices"]) for r in rows if r["kind"] in ("full", "full_d30")} == {5, 30}
    gaps = pq.read_table(out / "table=feed_gaps" / "day=2026-11-23" / "part-0.parquet")
    assert gaps.schema.field("segments").type == pa.list_(pa.string())
    assert gaps.schema.field("connection").type == pa.int32()

    import duckdb
    import polars as pl

    glob = str(out / "table=candles_1m_complete" / "*" / "*.parquet")
    week = duckdb.sql(
        f"SELECT day, count(*) AS candles, sum(volume) AS volume FROM read_parquet('{glob}', hive_partitioning = true) "
        "GROUP BY day ORDER BY day"
    ).fetchall()
    assert [d for d, _, _ in week] == [FIRST, FIRST + timedelta(days=1)] and all(n > 0 for _, n, _ in week)
    frame = pl.scan_parquet(str(out / "table=ticks" / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert frame.height == len(await database_rows(single_migrated, "ticks", FIRST)) * 2
    assert frame.schema["time"] == pl.Datetime("us", "UTC") and frame.schema["bid_prices"] == pl.List(
        pl.Float64
    )
    assert frame.schema["day"] == pl.Date


async def test_a_rerun_skips_finished_days_and_redoes_today(single_migrated: str, tmp_path: Path) -> None:
    await synthetic(single_migrated, FIRST, 1, 500)
    today = datetime.now(IST).date()
    await execute(
        single_migrated,
        "INSERT INTO market_status VALUES ('NSE_FO', 'normal', 'NORMAL_OPEN', $1, $1)",
        datetime.now(UTC),
    )
    out = tmp_path / "out"
    args = [
        "--from",
        FIRST.isoformat(),
        "--to",
        today.isoformat(),
        "--out",
        str(out),
        "--tables",
        "ticks,market_status",
    ]
    assert run_export(single_migrated, *args, cwd=tmp_path).returncode == 0
    done = {p: p.stat().st_mtime_ns for p in parts(out)}
    assert len(done) == 3  # ticks and market_status of FIRST, market_status of today
    again = run_export(single_migrated, *args, cwd=tmp_path)
    assert again.returncode == 0 and "2 already exported" in again.stdout, again.stdout
    after = {p: p.stat().st_mtime_ns for p in parts(out)}
    today_file = out / "table=market_status" / f"day={today.isoformat()}" / "part-0.parquet"
    assert after[today_file] != done[today_file]  # the day is not over: written again
    assert {p: t for p, t in after.items() if p != today_file} == {
        p: t for p, t in done.items() if p != today_file
    }
    redo = run_export(single_migrated, *args, "--redo", cwd=tmp_path)
    assert redo.returncode == 0 and "already exported" not in redo.stdout
    assert all(p.stat().st_mtime_ns != done[p] for p in parts(out))


@pytest.mark.limit(300)
async def test_an_export_killed_midway_leaves_complete_files_only(
    single_migrated: str, tmp_path: Path
) -> None:
    n_days = 4
    await synthetic(single_migrated, FIRST, n_days, 60_000)
    days = [FIRST + timedelta(days=i) for i in range(n_days)]
    out = tmp_path / "out"
    args = [
        "--from",
        days[0].isoformat(),
        "--to",
        days[-1].isoformat(),
        "--out",
        str(out),
        "--tables",
        "ticks",
    ]
    proc = start_export(single_migrated, *args, cwd=tmp_path)
    try:
        # Kill it while it writes a day after the first: one file complete, one under its temporary name.
        deadline = time.monotonic() + 120
        while not (parts(out) and list(out.glob("table=ticks/day=*/.*.tmp"))):
            assert proc.poll() is None, "the export finished before it could be killed: give it more rows"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = parts(out)
    assert 1 <= len(finished) < n_days
    assert list(out.glob("table=ticks/day=*/.*.tmp"))  # what the killed export was writing
    for path in finished:  # every complete file is whole and equal to its day
        day = date.fromisoformat(path.parent.name.removeprefix("day="))
        assert file_rows(path) == await database_rows(single_migrated, "ticks", day)
    rerun = run_export(single_migrated, *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} already exported" in rerun.stdout
    assert "left by an interrupted export" in rerun.stderr
    assert not list(out.rglob("*.tmp"))
    assert len(parts(out)) == n_days
    assert await expect_equal(single_migrated, out, days, ("ticks",)) == n_days
