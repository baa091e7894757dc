"""Connect to TimescaleDB: wait while it is away, fail at once when it never will work.

A server that is not up yet (refused, timed out, starting, unknown host while
Docker's DNS settles) is waited for with backoff; a stop request ends the
wait. A DSN that cannot work (malformed, bad port, bad sslmode, wrong user or
password, no such database) is a :class:`ConfigError` naming
``COLLECTOR_DATABASE_URL`` at once, the password never in its message.

This module is also the database boundary's one rule for "retry or give up",
which every caller uses: :data:`TRANSIENT_ERRORS` (the database is away, or
was: try again on a new connection), :data:`DATA_ERRORS` (this data can never
be stored: set it aside), :data:`PERMANENT_CONNECT_ERRORS` (connecting can
never work: the configuration is wrong). And it names the timeouts once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from collector.core.backoff import full_jitter
from collector.exceptions import ConfigError, DatabaseUnreachable, unreachable_reason

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "DATA_ERRORS",
    "JOB_COMMAND_TIMEOUT_S",
    "PERMANENT_CONNECT_ERRORS",
    "TRANSIENT_ERRORS",
    "connect",
    "connect_once",
    "connect_until",
    "redact",
    "where",
]

logger = logging.getLogger(__name__)

SETTING = "COLLECTOR_DATABASE_URL"
# How long opening a connection may take.
CONNECT_TIMEOUT_S = 10.0
# How long one statement of the supervisor's start-up or of a writer may take.
COMMAND_TIMEOUT_S = 300.0
# How long one statement of a scheduled job may take (a candle refresh after an outage is long).
JOB_COMMAND_TIMEOUT_S = 600.0
# Retrying these cannot help: the configuration is wrong.
PERMANENT_CONNECT_ERRORS = (
    ValueError,  # asyncpg's ClientConfigurationError too: malformed DSN, bad sslmode
    OverflowError,  # port out of range
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, wrong password (28P01)
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InsufficientPrivilegeError,  # no CONNECT privilege
)
# The database is away, or was: try again later. InternalClientError is asyncpg's
# word for a protocol state broken by a connection that died mid-operation.
TRANSIENT_ERRORS = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)  # fmt: skip
# This data is bad, not the database away: class 22 (data exception) and 23
# (integrity constraint violation). Retrying the same rows cannot help.
DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def redact(text: str, dsn: str) -> str:
    """``text`` without the DSN's password (asyncpg messages do not echo it, but be sure)."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect (within :data:`CONNECT_TIMEOUT_S` unless told), permanent failures a ConfigError."""
    kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
    try:
        return await asyncpg.connect(dsn, **kwargs)
    except PERMANENT_CONNECT_ERRORS as exc:
        raise ConfigError(SETTING, redact(f"{type(exc).__name__}: {exc}", dsn)) from None


def where(dsn: str) -> str:
    """``host:port/database`` of a DSN: what a message may say about it (no user, no password)."""
    try:
        parts = urlsplit(dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "an unusable URL"


async def connect_once(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A command's one connection (``migrate``, ``instruments sync``): no waiting for the server.

    A server that does not answer is a :class:`DatabaseUnreachable` whose one line names
    ``COLLECTOR_DATABASE_URL`` and where it points, never the password.
    """
    try:
        return await connect(dsn, **kwargs)
    except TRANSIENT_ERRORS as exc:
        message = redact(f"{SETTING}: cannot connect to {where(dsn)}: {unreachable_reason(exc)}", dsn)
        raise DatabaseUnreachable(message) from None


async def connect_until(
    dsn: str,
    stop: asyncio.Event,
    what: str,
    *,
    backoff: Callable[[], Iterator[float]] = lambda: full_jitter(base_s=0.5, cap_s=10.0),
    **kwargs: Any,
) -> asyncpg.Connection | None:
    """Connect, waiting for the server as long as it takes; None once ``stop`` is set."""
    delays = backoff()
    while not stop.is_set():
        attempt = asyncio.create_task(connect(dsn, **kwargs))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            return None
        try:
            return attempt.result()
        except TRANSIENT_ERRORS as exc:
            delay = next(delays)
            logger.warning(
                "%s: database not reachable (%s); retrying in %.1fs",
                what, redact(str(exc) or type(exc).__name__, dsn), delay,
            )  # fmt: skip
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
    return None
