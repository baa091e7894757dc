"""Connect to TimescaleDB: wait while it is away, fail at once when it never will work.

A server that is not up yet (refused, timed out, starting, unknown host while
Docker's DNS settles) is waited for with backoff; a stop request ends the
wait. A DSN that cannot work (malformed, bad port, bad sslmode, wrong user or
password, no such database) is a :class:`ConfigError` naming
``COLLECTOR_DATABASE_URL`` at once, the password never in its message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from collector.core.backoff import full_jitter
from collector.exceptions import ConfigError

__all__ = ["PERMANENT_CONNECT_ERRORS", "TRANSIENT_ERRORS", "connect", "connect_until", "redact"]

logger = logging.getLogger(__name__)

SETTING = "COLLECTOR_DATABASE_URL"
# Retrying these cannot help: the configuration is wrong.
PERMANENT_CONNECT_ERRORS = (
    ValueError,  # asyncpg's ClientConfigurationError too: malformed DSN, bad sslmode
    OverflowError,  # port out of range
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, wrong password (28P01)
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InsufficientPrivilegeError,  # no CONNECT privilege
)
# The database is away, or was: try again later.
TRANSIENT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def redact(text: str, dsn: str) -> str:
    """``text`` without the DSN's password (asyncpg messages do not echo it, but be sure)."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, with permanent failures turned into a ConfigError."""
    try:
        return await asyncpg.connect(dsn, **kwargs)
    except PERMANENT_CONNECT_ERRORS as exc:
        raise ConfigError(SETTING, redact(f"{type(exc).__name__}: {exc}", dsn)) from None


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
