"""Apply the plain-SQL migrations in ``migrations/`` in order.

Each file ``NNN_name.sql`` runs in its own transaction and is recorded in
``schema_migrations`` with a SHA-256 checksum; an applied file whose checksum
changed is an error (write a new migration instead). A session advisory lock
serializes collectors that start at the same moment.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from collector.exceptions import MigrationError

__all__ = ["MIGRATIONS_DIR", "Migration", "discover", "migrate", "pending"]

logger = logging.getLogger(__name__)

# A link to the top-level migrations/ in a checkout, a copy in a wheel: one source of truth.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x636F6C6C  # "coll": one lock id for all collectors of a database
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files, checking names and numbering."""
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


async def pending(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations not applied to this database yet (all of them on an empty one); read-only."""
    migrations = discover(directory)
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return migrations
    applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in migrations if m.version not in applied]


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; return the versions applied now."""
    migrations = discover(directory)

    def on_notice(_conn: Any, message: Any) -> None:
        logger.info("migration: %s", message.message)

    conn.add_log_listener(on_notice)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
        )
        applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
        done: list[int] = []
        for m in migrations:
            row = applied.get(m.version)
            if row is not None:
                if row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:03d}_{m.name}.sql changed after it was applied "
                        "(checksum mismatch); add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {m.version:03d}_{m.name}.sql failed: {exc}") from exc
            logger.info("applied migration %03d_%s", m.version, m.name)
            done.append(m.version)
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            logger.warning("the database has migrations this collector does not know: %s", unknown)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        conn.remove_log_listener(on_notice)
