"""The read-only and writer roles do what they say, on a real server."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from collector.db.migrate import migrate
from tests.conftest import Server


async def login(migrated: str, role: str) -> tuple[str, str]:
    name = f"u_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    conn = await asyncpg.connect(migrated)
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {role}")
    finally:
        await conn.close()
    base, _, rest = migrated.partition("://")
    hostpart = rest.split("@", 1)[-1]
    return name, f"{base}://{name}:{password}@{hostpart}"


async def test_reader_can_select_and_nothing_else(migrated: str) -> None:
    _, dsn = await login(migrated, "collector_reader")
    conn = await asyncpg.connect(dsn)
    try:
        for rel in ("ticks", "candles_1m", "candles_1d", "instruments_current", "feed_gaps", "dead_letters"):
            await conn.fetch(f"SELECT * FROM {rel} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO feed_gaps VALUES (0, now(), now(), '{}', 'x')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM ticks")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT refresh_candles(now())")
    finally:
        await conn.close()


async def test_writer_can_ingest_and_refresh_but_not_change_the_schema(migrated: str) -> None:
    _, dsn = await login(migrated, "collector_writer")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp) "
            "VALUES (now(), 'NSE_EQ|X', 'ltpc', false, now(), now(), 1.0)"
        )
        await conn.execute("INSERT INTO ingest_ledger (batch_id, rows) VALUES ($1, 1)", uuid.uuid4())
        await conn.execute(
            "INSERT INTO dead_letters (table_name, reason, row_data) VALUES ('ticks', 'test', '{}')"
        )
        await conn.execute("SELECT refresh_candles(now() - interval '1 hour')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DROP TABLE ticks")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM ticks")
    finally:
        await conn.close()


async def test_roles_survive_a_second_database(tsdb: Server, migrated: str) -> None:
    # Roles are cluster-wide: migrating another database must not trip over them.
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(tsdb.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        conn = await asyncpg.connect(tsdb.database(name))
        try:
            assert await migrate(conn) == [1, 2, 3, 4]
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()
