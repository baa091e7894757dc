"""``collector export`` as a process, and its files checked against the database, for the export tests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from collector.core.span import day_bounds
from collector.export.parquet import TABLES
from tests.support.db import query

__all__ = ["database_rows", "expect_equal", "file_rows", "parts", "run_export", "start_export"]


def _env(dsn: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
        "COLLECTOR_DATABASE_URL": dsn,
    }


def run_export(dsn: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "export", *args], cwd=cwd, env=_env(dsn), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def start_export(dsn: str, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "collector", "export", *args], cwd=cwd, env=_env(dsn),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def database_rows(dsn: str, table: str, day: date) -> list[dict[str, Any]]:
    start, end = day_bounds(day)
    spec = TABLES[table]
    rows = await query(
        dsn,
        f"SELECT * FROM {table} WHERE {spec.day_column} >= $1 AND {spec.day_column} < $2 ORDER BY {spec.order}",
        start,
        end,
    )
    return [dict(r) for r in rows]


def file_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("table=*/day=*/part-0.parquet"))


async def expect_equal(dsn: str, out: Path, days: list[date], tables: tuple[str, ...] = tuple(TABLES)) -> int:
    """Every (table, day) with rows has its file, equal to the database; returns the files checked."""
    checked = 0
    for day in days:
        for table in tables:
            path = out / f"table={table}" / f"day={day.isoformat()}" / "part-0.parquet"
            expected = await database_rows(dsn, table, day)
            if not expected:
                assert not path.exists(), path
                continue
            assert file_rows(path) == expected, (table, day)
            checked += 1
    return checked
