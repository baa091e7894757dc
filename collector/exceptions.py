"""Every error the collector raises on purpose.

::

    CollectorError
    ├── ConfigError                 a setting is wrong; exit with one clear line
    │   └── JournalLockedError      another process holds the journal folder
    ├── UsageError                  a command's input is wrong (a span, a key, a port); exit 2, one line
    ├── DecodeError (ValueError)    a frame could not be decoded; counted, skipped
    ├── MigrationError              a migration failed or an applied file changed
    ├── UpstoxError                 a call to Upstox failed: the feed socket or a REST API
    │   ├── TokenRejected           401: the token is wrong; re-read it, retry slowly
    │   ├── AccessForbidden         403: reused code, expired token, no entitlement
    │   ├── RateLimited             429: back off harder
    │   ├── UpstoxNetworkError      DNS, TCP, timeouts, 5xx, closed sockets
    │   ├── UpstoxTLSError          certificate verification or handshake failure
    │   └── UpstoxProtocolError     Upstox broke the protocol, or refused the request (4xx)
    ├── Unreachable (OSError)       a service a command needs did not answer; one line names it
    │   ├── DatabaseUnreachable     a command cannot connect to COLLECTOR_DATABASE_URL
    │   └── MasterUnreachable       the instrument master's URL: network, DNS, refused, 5xx
    ├── JournalWriteError (OSError) the journal's disk refused an append
    └── PositionConflict            a journal's committed position moved under us

``UpstoxError.reason`` is the fixed label used in metrics ("401", "403",
"429", "network", "tls", "protocol"). No exception carries a token. What a
REST caller does about an Upstox error is decided here, once:
``transient`` (429, network: the same call may work in a moment, retry it
with backoff) or ``credentials`` (401, 403: every call with this token fails
alike, stop asking); anything else is this one call refused. A feed
connection retries every failure forever (:mod:`collector.feed.connection`).
"""

from __future__ import annotations

import socket
from typing import ClassVar, Literal

UpstoxReason = Literal["401", "403", "429", "network", "tls", "protocol"]
UPSTOX_REASONS: tuple[UpstoxReason, ...] = ("401", "403", "429", "network", "tls", "protocol")


class CollectorError(Exception):
    """Base class of the collector's own errors."""


class ConfigError(CollectorError):
    """A setting is missing or invalid. ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class UsageError(CollectorError):
    """What a command was asked cannot be done as asked: the message says why, in one line."""


class DecodeError(CollectorError, ValueError):
    """A feed frame could not be decoded."""


class MigrationError(CollectorError):
    """A migration could not be applied, or an applied one was changed."""


class UpstoxError(CollectorError):
    """A call to Upstox failed: a feed connection attempt, or a REST call (authorize, candles, holidays)."""

    reason: ClassVar[UpstoxReason] = "network"
    transient: ClassVar[bool] = False  # the same call may well work in a moment
    credentials: ClassVar[bool] = False  # the token or the account is refused: no call will work

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenRejected(UpstoxError):
    """HTTP 401: the access token is missing, malformed or revoked."""

    reason = "401"
    credentials = True


class AccessForbidden(UpstoxError):
    """HTTP 403: a reused one-time code, an expired token, or no entitlement."""

    reason = "403"
    credentials = True


class RateLimited(UpstoxError):
    """HTTP 429: Upstox's REST rate limit was hit."""

    reason = "429"
    transient = True


class UpstoxNetworkError(UpstoxError):
    """The network failed: refused, reset, timed out, or a 5xx answer."""

    reason = "network"
    transient = True


class UpstoxTLSError(UpstoxError):
    """TLS failed, most often certificate verification."""

    reason = "tls"


class UpstoxProtocolError(UpstoxError):
    """The server answered something the protocol does not allow."""

    reason = "protocol"


class JournalLockedError(ConfigError):
    """Another process has the journal folder: two writers would corrupt it."""

    def __init__(self, message: str) -> None:
        super().__init__("COLLECTOR_JOURNAL_DIR", message)


class Unreachable(CollectorError, OSError):
    """A service did not answer; the message is one line naming it (no secret in it).

    An OSError still, so whoever retries network trouble retries this; a command gives up with it.
    """


class DatabaseUnreachable(Unreachable):
    """A command cannot connect to ``COLLECTOR_DATABASE_URL``: refused, unknown host, no answer in time."""


class MasterUnreachable(Unreachable):
    """The instrument master could not be fetched: the network, DNS, a refused port, a timeout, 5xx."""


def unreachable_reason(exc: object) -> str:
    """Why a connection failed, in a few words for an :class:`Unreachable` message."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class JournalWriteError(CollectorError, OSError):
    """The disk refused a journal append (full, read-only, failing)."""


class PositionConflict(CollectorError):
    """The committed journal position is not where this writer left it.

    Another writer committed in between (it should not exist: the writer holds a
    lock), or a commit whose outcome was unknown did happen. Either way the
    writer reloads the position and state from the database and goes on from
    there, so nothing is stored twice.
    """


def classify_http_status(status: int, what: str, retry_after: str | None = None) -> UpstoxError:
    """The UpstoxError for an HTTP status answered by ``what``."""
    if status == 401:
        return TokenRejected(f"{what} answered 401: the token is invalid or expired")
    if status == 403:
        return AccessForbidden(f"{what} answered 403")
    if status == 429:
        try:
            after = float(retry_after) if retry_after else None
        except ValueError:
            after = None
        return RateLimited(f"{what} answered 429", retry_after_s=after)
    if 500 <= status < 600:
        return UpstoxNetworkError(f"{what} answered {status}")
    return UpstoxProtocolError(f"{what} answered {status}")
