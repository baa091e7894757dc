"""The roles do what they say on both flavours: Grafana reads only, the collector writes without DDL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from collector.core.records import Tick
from collector.db.jobs import Jobs, candles_mode
from collector.db.migrate import discover, migrate
from collector.metrics import SupervisorMetrics
from tests.support.db import Server, connection, login
from tests.support.pipeline import encode_ticks, journal_frames, store

LEVELS = ("candles_1m", "candles_5m", "candles_15m", "candles_1h", "candles_1d")
# What collector_writer may do beyond SELECT, per table (004, 005, 008).
WRITER = {
    "ticks": {"INSERT"},
    "market_status": {"INSERT"},
    "feed_sessions": {"INSERT"},
    "feed_gaps": {"INSERT"},
    "dead_letters": {"INSERT"},
    "exchange_bars": {"INSERT", "UPDATE"},
    "instruments": {"INSERT", "UPDATE"},
    "journal_positions": {"INSERT", "UPDATE"},
    "candle_refresh_requests": {"INSERT"},
}
# On the Apache build the candle levels are tables that the writer refreshes.
WRITER_SCHEDULED = {level: {"INSERT", "DELETE"} for level in LEVELS}
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


async def relations(conn: asyncpg.Connection) -> list[str]:
    """Every table, view and materialized view users see (schema public)."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY 1"
    )
    return [r["relname"] for r in rows]


async def privileges(conn: asyncpg.Connection, role: str, rel: str) -> set[str]:
    return {
        p
        for p in PRIVILEGES
        if await conn.fetchval("SELECT has_table_privilege($1, $2, $3)", role, f"public.{rel}", p)
    }


async def test_reader_can_select_everything_and_change_nothing(migrated: str) -> None:
    async with connection(migrated) as owner:
        rels = await relations(owner)
        assert set(LEVELS) | {"ticks", "journal_positions", "candle_refresh_requests"} <= set(rels)
        assert "ingest_ledger" not in rels  # dropped by 005
        for rel in rels:
            assert await privileges(owner, "collector_reader", rel) == {"SELECT"}, rel
    async with login(migrated, "collector_reader") as dsn:
        async with connection(dsn) as conn:
            for rel in rels:
                await conn.fetch(f"SELECT * FROM {rel} LIMIT 1")
            refused = [
                "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason) "
                "VALUES (0, now(), now(), '{}', 'x')",
                "DELETE FROM ticks",
                "UPDATE journal_positions SET dirty_since = NULL",
                "SELECT refresh_candles(now())",
                "CALL collector_refresh_late_candles(0, NULL)",
                "CREATE TABLE mine (x int)",
            ]
            for sql in refused:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)


async def test_writer_has_exactly_its_grants_and_no_ddl(migrated: str) -> None:
    async with connection(migrated) as owner:
        mode = await candles_mode(owner)
        extra = WRITER | (WRITER_SCHEDULED if mode == "scheduled_refresh" else {})
        for rel in await relations(owner):
            got = await privileges(owner, "collector_writer", rel)
            if rel in extra:
                assert got == {"SELECT"} | extra[rel], rel
            else:  # a table added later: read-only unless granted, never TRUNCATE/REFERENCES/TRIGGER
                assert "SELECT" in got and not got & {"TRUNCATE", "REFERENCES", "TRIGGER"}, (rel, got)
        # It owns nothing and may create nothing: no DDL.
        owned = await owner.fetchval(
            "SELECT count(*) FROM pg_class WHERE pg_has_role('collector_writer', relowner, 'USAGE')"
        )
        assert owned == 0
        assert not await owner.fetchval("SELECT has_schema_privilege('collector_writer', 'public', 'CREATE')")


async def test_writer_ingests_and_refreshes_but_cannot_change_the_schema(
    migrated: str, tmp_path: Path
) -> None:
    t = datetime.now(UTC) - timedelta(days=40)
    async with login(migrated, "collector_writer") as dsn:
        # The real writer: journal position, ticks and the candle mark in one transaction.
        tick = Tick(t, "NSE_EQ|X", "ltpc", False, t, t, 1.0, 1, 0.0, None, None, *([None] * 19))
        journal_frames(tmp_path, [encode_ticks([tick])])
        registry = await store(dsn, tmp_path)
        assert registry.get_sample_value("collector_rows_written_total", {"table": "ticks"}) == 1

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn)

        jobs = Jobs(connect=connect, metrics=SupervisorMetrics(CollectorRegistry()))
        assert await jobs.refresh_candles()  # the marks are taken, refreshed or handed over
        async with connection(dsn) as conn:
            assert (
                await conn.fetchval("SELECT count(*) FROM journal_positions WHERE dirty_since IS NOT NULL")
                == 0
            )
            if jobs.mode == "continuous_aggregates":
                # Why the hand-over exists: only the owner may refresh a continuous aggregate.
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
                    await conn.execute("CALL refresh_continuous_aggregate('candles_1m', NULL, NULL)")
                assert await conn.fetchval("SELECT count(*) FROM candle_refresh_requests") == 1
            else:
                assert await conn.fetchval("SELECT sum(ticks) FROM candles_1d") == 1
            await conn.execute(
                "INSERT INTO dead_letters (table_name, reason, row_data) VALUES ('ticks', 'test', '{}')"
            )
            refused = [
                "DROP TABLE ticks",
                "ALTER TABLE ticks ADD COLUMN x int",
                "TRUNCATE ticks",
                "DELETE FROM ticks",
                "CREATE TABLE mine (x int)",
                "DROP VIEW candles_1m_source",
                "DELETE FROM journal_positions",
                "CALL collector_refresh_late_candles(0, NULL)",
                "SELECT drop_chunks('ticks', older_than => now())",
            ]
            if jobs.mode == "continuous_aggregates":
                refused += [
                    "DROP MATERIALIZED VIEW candles_1d",
                    "SELECT remove_retention_policy('ticks', if_exists => true)",
                    "CALL remove_columnstore_policy('ticks', if_exists => true)",
                ]
            for sql in refused:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)


async def test_roles_survive_a_second_database(tsdb: Server, migrated: str) -> None:
    # Roles are cluster-wide: migrating another database must not trip over them.
    name = "t_" + uuid.uuid4().hex[:12]
    async with connection(tsdb.dsn) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            async with connection(tsdb.database(name)) as conn:
                assert await migrate(conn) == [m.version for m in discover()]
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
