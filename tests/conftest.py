"""Test services: a real TimescaleDB, fresh databases, and async tests.

The TimescaleDB comes from, in order:
1. ``COLLECTOR_TEST_DATABASE_URL`` (a superuser DSN of a server you run);
2. Docker, where it works: testcontainers with the timescale/timescaledb image;
3. ``scripts/timescaledb-local`` (Debian trixie's TimescaleDB in a chroot),
   which the README's test command starts on this kind of machine.
Every test that needs a database gets a new one, so tests never share state.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_TSDB = ROOT / "scripts" / "timescaledb-local"


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(asyncio.wait_for(pyfuncitem.obj(**args), timeout=300))
        return True
    return None


class Server:
    """The TimescaleDB under test, and (when we own it) a way to stop and start it."""

    def __init__(self, dsn: str, control: list[str] | None = None) -> None:
        self.dsn = dsn
        self._control = control

    @property
    def controllable(self) -> bool:
        return self._control is not None

    def stop(self) -> None:
        assert self._control is not None
        subprocess.run([*self._control, "stop"], check=True, capture_output=True)

    def start(self) -> None:
        assert self._control is not None
        subprocess.run([*self._control, "start"], check=True, capture_output=True)

    def database(self, name: str) -> str:
        base, _, _ = self.dsn.rpartition("/")
        return f"{base}/{name}"


def _docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def tsdb() -> Iterator[Server]:
    dsn = os.environ.get("COLLECTOR_TEST_DATABASE_URL")
    if dsn:
        yield Server(dsn)
        return
    if _docker_works():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("timescale/timescaledb:2.17.2-pg17", driver=None) as pg:
            yield Server(pg.get_connection_url())
        return
    subprocess.run([str(LOCAL_TSDB), "start"], check=True)
    out = subprocess.run([str(LOCAL_TSDB), "dsn"], check=True, capture_output=True, text=True)
    yield Server(out.stdout.strip(), [str(LOCAL_TSDB)])


async def _admin(server: Server, sql: str) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database(tsdb: Server) -> Iterator[str]:
    """DSN of a new, empty database (timescaledb available), dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(tsdb, f"CREATE DATABASE {name}"))
    yield tsdb.database(name)
    asyncio.run(_admin(tsdb, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def migrated(database: str) -> str:
    """DSN of a new database with every migration applied."""
    from collector.db.migrate import migrate

    async def go() -> None:
        conn = await asyncpg.connect(database)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(go())
    return database


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query synchronously (for assertions outside an event loop)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())
