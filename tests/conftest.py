"""Test services: real TimescaleDB servers of both flavours, fresh databases, async tests.

Every test that takes a database runs once per TimescaleDB flavour:

- ``apache``: Debian trixie's package, the Apache-licensed build (no continuous
  aggregates, columnstore or policies);
- ``tsl``: TimescaleDB 2.29.2 built with the Timescale License code, what the
  ``timescale/timescaledb`` image that docker compose runs has.

Both come from ``scripts/timescaledb-local`` (a chroot each, started here if
the test command has not), so the tests can stop and start them.
``COLLECTOR_TEST_FLAVOURS=apache`` (or ``tsl``) narrows a local run to one;
``COLLECTOR_TEST_DATABASE_URL`` points every database test at one server of
your own instead (a superuser DSN; tests that stop the server then fail).
Every test that needs a database gets a new one, so tests never share state.

Time limits: an ``async def`` test gets ``ASYNC_TEST_LIMIT_S``; when it is
over, the test fails even if its code swallows the cancellation, and the
event loop is abandoned rather than waited on. pytest-timeout (``timeout`` in
pyproject.toml, thread method) is the outer bound for everything else: it
ends the whole run with every thread's stack, which no test code can catch.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_TSDB = ROOT / "scripts" / "timescaledb-local"
FLAVOURS = ("apache", "tsl")
ASYNC_TEST_LIMIT_S = 600.0


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop, within a limit they cannot swallow."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    limit = (
        float(pyfuncitem.get_closest_marker("limit").args[0])
        if pyfuncitem.get_closest_marker("limit")
        else ASYNC_TEST_LIMIT_S
    )
    loop = asyncio.new_event_loop()
    task = loop.create_task(pyfuncitem.obj(**args))
    try:
        done, _ = loop.run_until_complete(asyncio.wait({task}, timeout=limit))
        if task not in done:
            task.cancel()
            loop.run_until_complete(asyncio.wait({task}, timeout=5.0))
            stack = "".join(
                f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n"
                for frame in task.get_stack()
            )
            pytest.fail(f"test exceeded its {limit:.0f}s limit; it was at:\n{stack}", pytrace=False)
        task.result()
    finally:
        if task.done():
            # Let what the test started finish its cancellation, briefly.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "limit(seconds): time limit of an async test")


FIGURES: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Any:
    """Record a measured figure (what was injected, for how long, what was lost): printed at the end."""

    def record(text: str) -> None:
        FIGURES.append(f"{request.node.name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by the fault tests")
        for line in FIGURES:
            terminalreporter.write_line(line)


class Server:
    """A TimescaleDB under test, and (when we run it) a way to stop and start it."""

    def __init__(self, dsn: str, flavour: str, control: list[str] | None = None) -> None:
        self.dsn = dsn
        self.flavour = flavour
        self._control = control

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
        base, _, _ = self.dsn.rpartition("/")
        return f"{base}/{name}"

    def __repr__(self) -> str:
        return f"Server({self.flavour})"


def _flavours() -> list[str]:
    if os.environ.get("COLLECTOR_TEST_DATABASE_URL"):
        return ["external"]
    wanted = os.environ.get("COLLECTOR_TEST_FLAVOURS", ",".join(FLAVOURS))
    chosen = [f.strip() for f in wanted.split(",") if f.strip()]
    unknown = set(chosen) - set(FLAVOURS)
    if unknown:
        raise pytest.UsageError(f"COLLECTOR_TEST_FLAVOURS: unknown flavour(s) {sorted(unknown)}")
    return chosen


def _server(flavour: str) -> Server:
    if flavour == "external":
        return Server(os.environ["COLLECTOR_TEST_DATABASE_URL"], "external")
    control = [str(LOCAL_TSDB), "--flavour", flavour]
    subprocess.run([*control, "start"], check=True)
    out = subprocess.run([*control, "dsn"], check=True, capture_output=True, text=True)
    return Server(out.stdout.strip(), flavour, control)


@pytest.fixture(scope="session", params=_flavours())
def tsdb(request: pytest.FixtureRequest) -> Server:
    return _server(request.param)


@pytest.fixture(scope="session")
def single_tsdb() -> Server:
    """One server, for tests whose subject is the collector, not the database: the TSL flavour
    (what users run) unless the run is narrowed to another."""
    return _server("tsl" if "tsl" in _flavours() else _flavours()[0])


@pytest.fixture
def single_migrated(single_tsdb: Server) -> Iterator[str]:
    """A new migrated database on ``single_tsdb``."""
    name = "t_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(single_tsdb, f"CREATE DATABASE {name}"))
    dsn = single_tsdb.database(name)
    asyncio.run(_migrate(dsn))
    yield dsn
    asyncio.run(_admin(single_tsdb, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


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


async def _migrate(dsn: str) -> None:
    from collector.db.migrate import migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture
def migrated(database: str) -> str:
    """DSN of a new database with every migration applied."""
    asyncio.run(_migrate(database))
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
