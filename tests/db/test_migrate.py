from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from collector.db.migrate import MIGRATIONS_DIR, discover, migrate
from collector.exceptions import MigrationError
from tests.support.db import connection

ALL = [m.version for m in discover()]


async def test_applies_once_and_is_idempotent(database: str) -> None:
    async with connection(database) as conn:
        first = await migrate(conn)
        assert first == ALL and ALL[:5] == [1, 2, 3, 4, 5]
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)
        for rel in ("ticks", "instruments", "exchange_bars", "market_status", "feed_sessions", "feed_gaps",
                    "journal_positions", "dead_letters", "candles_1m", "candles_5m", "candles_15m", "candles_1h",
                    "candles_1d"):  # fmt: skip
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", rel), rel
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'ticks'"
        )


async def test_detects_which_candle_path_applies(database: str) -> None:
    async with connection(database) as conn:
        await migrate(conn)
        license_ = await conn.fetchval("SELECT current_setting('timescaledb.license')")
        mode = await conn.fetchval("SELECT value FROM storage_info WHERE key = 'candles'")
        caggs = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates WHERE view_name LIKE 'candles_%'"
        )
    if license_ == "timescale":
        assert (mode, caggs) == ("continuous_aggregates", 5)
    else:
        assert (mode, caggs) == ("scheduled_refresh", 0)


async def test_refuses_a_changed_migration(database: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    async with connection(database) as conn:
        await migrate(conn, migrations)
        path = migrations / "002_writer.sql"
        path.write_text(path.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError, match=r"002_writer\.sql changed"):
            await migrate(conn, migrations)


async def test_a_failing_migration_rolls_back_and_names_itself(database: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    (migrations / "999_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n"
    )
    async with connection(database) as conn:
        with pytest.raises(MigrationError, match=r"999_broken\.sql failed"):
            await migrate(conn, migrations)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == ALL[-1]


async def test_two_collectors_migrating_at_once(database: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connection(database)) for _ in range(3)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(ALL)]
