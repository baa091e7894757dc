"""TimescaleDB for tests: the servers, fresh databases, connections that close themselves, one-shot queries.

The servers come from ``scripts/timescaledb-local`` (``tests/conftest.py``
starts them and hands out :class:`Server` and database fixtures). A test
opens a connection with ``async with connection(dsn) as conn:``, or asks one
question with :func:`query` (in an event loop) or :func:`fetch` (outside
one); each closes its connection whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from collector.db.migrate import migrate
from tests.support.paths import ROOT

LOCAL_TSDB = ROOT / "scripts" / "timescaledb-local"
FLAVOURS = ("apache", "tsl")


class Server:
    """A TimescaleDB under test, and (when we run it) a way to stop and start it."""

    def __init__(self, dsn: str, flavour: str, control: list[str] | None = None) -> None:
        self.dsn = dsn
        self.flavour = flavour
        self._control = control

    @classmethod
    def local(cls, flavour: str) -> Server:
        """The server of ``flavour`` that scripts/timescaledb-local runs, started if it is not."""
        control = [str(LOCAL_TSDB), "--flavour", flavour]
        subprocess.run([*control, "start"], check=True)
        out = subprocess.run([*control, "dsn"], check=True, capture_output=True, text=True)
        return cls(out.stdout.strip(), flavour, control)

    @property
    def controllable(self) -> bool:
        return self._control is not None

    def stop(self) -> None:
        assert self._control is not None, "this test stops the database: run it on a server the tests start"
        subprocess.run([*self._control, "stop"], check=True, capture_output=True)

    def start(self) -> None:
        assert self._control is not None
        subprocess.run([*self._control, "start"], check=True, capture_output=True)

    def database(self, name: str) -> str:
        """The DSN of database ``name`` on this server."""
        base, _, _ = self.dsn.rpartition("/")
        return f"{base}/{name}"

    @contextlib.contextmanager
    def new_database(self, *, migrated: bool) -> Iterator[str]:
        """A database of its own for one test (migrated if asked); yields its DSN, then drops it."""
        name = "t_" + uuid.uuid4().hex[:12]
        asyncio.run(execute(self.dsn, f"CREATE DATABASE {name}"))
        try:
            dsn = self.database(name)
            if migrated:
                asyncio.run(migrate_database(dsn))
            yield dsn
        finally:
            asyncio.run(execute(self.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def __repr__(self) -> str:
        return f"Server({self.flavour})"


@contextlib.asynccontextmanager
async def connection(dsn: str, **kwargs: Any) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``dsn`` for the block, closed when it ends."""
    conn = await asyncpg.connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


async def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own."""
    async with connection(dsn) as conn:
        return await conn.fetch(sql, *args)  # type: ignore[no-any-return]


async def execute(dsn: str, sql: str, *args: Any) -> str:
    """Run one statement on a connection of its own; returns its status."""
    async with connection(dsn) as conn:
        return await conn.execute(sql, *args)  # type: ignore[no-any-return]


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """:func:`query` for a test outside an event loop."""
    return asyncio.run(query(dsn, sql, *args))


def chosen_flavours() -> list[str]:
    """The flavours this run tests: ``COLLECTOR_TEST_FLAVOURS`` (both by default), or "external"."""
    if os.environ.get("COLLECTOR_TEST_DATABASE_URL"):
        return ["external"]
    wanted = os.environ.get("COLLECTOR_TEST_FLAVOURS", ",".join(FLAVOURS))
    chosen = [f.strip() for f in wanted.split(",") if f.strip()]
    unknown = set(chosen) - set(FLAVOURS)
    if unknown:
        raise pytest.UsageError(f"COLLECTOR_TEST_FLAVOURS: unknown flavour(s) {sorted(unknown)}")
    return chosen


def server_of(flavour: str) -> Server:
    """The server of one of :func:`chosen_flavours`."""
    if flavour == "external":
        return Server(os.environ["COLLECTOR_TEST_DATABASE_URL"], "external")
    return Server.local(flavour)


async def migrate_database(dsn: str) -> None:
    async with connection(dsn) as conn:
        await migrate(conn)


async def create_login(owner_dsn: str, role: str) -> tuple[str, str]:
    """A new login user in ``role`` (as docker compose creates them): (its name, its DSN)."""
    name = f"u_{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(16)
    await execute(owner_dsn, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {role}")
    parts = urlsplit(owner_dsn)
    return name, f"postgresql://{name}:{password}@{parts.hostname}:{parts.port}{parts.path}"


@contextlib.asynccontextmanager
async def login(owner_dsn: str, role: str) -> AsyncIterator[str]:
    """A new login user in ``role`` for the block; yields its DSN, then drops it."""
    name, dsn = await create_login(owner_dsn, role)
    try:
        yield dsn
    finally:
        await execute(owner_dsn, f"DROP ROLE IF EXISTS {name}")


@contextlib.contextmanager
def login_sync(owner_dsn: str, role: str) -> Iterator[str]:
    """:func:`login` for a test outside an event loop."""
    name, dsn = asyncio.run(create_login(owner_dsn, role))
    try:
        yield dsn
    finally:
        asyncio.run(execute(owner_dsn, f"DROP ROLE IF EXISTS {name}"))
