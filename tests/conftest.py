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

What a test needs beyond this checkout and loopback sockets it opens itself
is a marker, so that ``scripts/check`` can leave it out: ``database`` (set
here on every test that takes a database fixture), ``provisioned`` (Debian's
prometheus and promtool, and trixie's promtool, which ``scripts/test``
installs as root) and ``network`` (a package index).

Time limits: an ``async def`` test gets ``ASYNC_TEST_LIMIT_S``; when it is
over, the test fails even if its code swallows the cancellation, and the
event loop is abandoned rather than waited on. pytest-timeout (``timeout`` in
pyproject.toml, thread method) is the outer bound for everything else: it
ends the whole run with every thread's stack, which no test code can catch.

Tests import what they share from ``tests.support``, never from here.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.db import Server, chosen_flavours, migrate_database, server_of

ASYNC_TEST_LIMIT_S = 600.0
# Fixtures that reach a TimescaleDB, or run a promtool that scripts/test installs: a test
# that takes one (directly or not) is marked "database" or "provisioned".
DATABASE_FIXTURES = frozenset({"tsdb", "single_tsdb", "database", "migrated", "single_migrated"})
PROVISIONED_FIXTURES = frozenset({"promtool"})


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
    config.addinivalue_line("markers", "database: needs a TimescaleDB (set on every test that takes one)")
    config.addinivalue_line(
        "markers", "provisioned: needs what scripts/test installs as root (prometheus, promtools)"
    )
    config.addinivalue_line("markers", "network: needs a package index")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DATABASE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.database)
        if PROVISIONED_FIXTURES & fixtures:
            item.add_marker(pytest.mark.provisioned)


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


@pytest.fixture(scope="session", params=chosen_flavours())
def tsdb(request: pytest.FixtureRequest) -> Server:
    return server_of(request.param)


@pytest.fixture(scope="session")
def single_tsdb() -> Server:
    """One server, for tests whose subject is the collector, not the database: the TSL flavour
    (what users run) unless the run is narrowed to another."""
    return server_of("tsl" if "tsl" in chosen_flavours() else chosen_flavours()[0])


@pytest.fixture
def single_migrated(single_tsdb: Server) -> Iterator[str]:
    """A new migrated database on ``single_tsdb``."""
    with single_tsdb.new_database(migrated=True) as dsn:
        yield dsn


@pytest.fixture
def database(tsdb: Server) -> Iterator[str]:
    """DSN of a new, empty database (timescaledb available), dropped afterwards."""
    with tsdb.new_database(migrated=False) as dsn:
        yield dsn


@pytest.fixture
def migrated(database: str) -> str:
    """DSN of a new database with every migration applied."""
    asyncio.run(migrate_database(database))
    return database
