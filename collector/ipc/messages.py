"""What the supervisor and its children say to each other: one small frozen dataclass per message.

A channel (:mod:`collector.ipc.channel`) carries one JSON object per line,
whose ``op`` names the message (:data:`OPS` lists them all). Who sends what:

======================  ================================================================
supervisor → feed       :class:`FeedSpec` (the first line), :class:`Keys`,
                        :class:`NewCalendar`, :class:`Authorized`,
                        :class:`AuthorizeFailed`, :class:`Stop`
feed → supervisor       :class:`Authorize`, :class:`Connected`, :class:`Disconnected`,
                        :class:`MarketInfo`
supervisor → writer     :class:`WriterSpec` (the first line), :class:`Drain`, :class:`Stop`
======================  ================================================================

A receiver matches on the class (``match message: case Keys(keys=keys): ...``).
Secrets (the database URL) travel in a spec only, and never show in a repr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from collector.core.calendar import Calendar
from collector.core.records import Mode
from collector.exceptions import UpstoxError, UpstoxReason
from collector.options import FeedOptions, JournalOptions, WriterOptions

__all__ = [
    "OPS",
    "Authorize",
    "AuthorizeFailed",
    "Authorized",
    "Connected",
    "Disconnected",
    "Drain",
    "FeedSpec",
    "Keys",
    "MarketInfo",
    "Message",
    "NewCalendar",
    "Spec",
    "Stop",
    "WriterSpec",
    "parse",
]


class _Message:
    """Encoding shared by the messages whose fields are plain JSON values or datetimes (ISO 8601)."""

    __slots__ = ()
    op: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {
            "op": self.op,
            **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        # Annotations are strings here (postponed evaluation): "datetime" names the one type to parse.
        times = {f.name for f in dataclasses.fields(cls) if f.type == "datetime"}  # type: ignore[arg-type]
        return cls(
            **{k: datetime.fromisoformat(v) if k in times else v for k, v in data.items() if k != "op"}
        )


# -- either way ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop(_Message):
    """Exit now; what is not committed stays in the journal for the next start."""

    op = "stop"


# -- supervisor → writer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drain(_Message):
    """Commit everything the journal holds, then exit."""

    op = "drain"


@dataclass(frozen=True, slots=True)
class WriterSpec(_Message):
    """What a writer process is to do: its first line."""

    op = "writer_spec"
    connection: int
    journal_dir: str
    database_url: str = field(repr=False)
    options: WriterOptions
    log_level: str
    metrics_dir: str | None

    def to_json(self) -> dict[str, Any]:
        return {**_Message.to_json(self), "options": dataclasses.asdict(self.options)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            connection=data["connection"],
            journal_dir=data["journal_dir"],
            database_url=data["database_url"],
            options=WriterOptions(**data["options"]),
            log_level=data["log_level"],
            metrics_dir=data["metrics_dir"],
        )


# -- supervisor → feed --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedSpec(_Message):
    """What a feed process is to do: its first line."""

    op = "feed_spec"
    connection: int
    keys: dict[Mode, list[str]]
    journal_dir: str
    options: FeedOptions
    journal: JournalOptions
    calendar: Calendar | None
    since: datetime | None  # the last activity the database knows of, for a journal that has none
    log_level: str
    metrics_dir: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            **_Message.to_json(self),
            "options": dataclasses.asdict(self.options),
            "journal": dataclasses.asdict(self.journal),
            "calendar": self.calendar.to_json() if self.calendar is not None else None,
            "since": self.since.isoformat() if self.since is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            connection=data["connection"],
            keys=data["keys"],
            journal_dir=data["journal_dir"],
            options=FeedOptions(**data["options"]),
            journal=JournalOptions(**data["journal"]),
            calendar=Calendar.from_json(data["calendar"]) if data["calendar"] is not None else None,
            since=datetime.fromisoformat(data["since"]) if data["since"] is not None else None,
            log_level=data["log_level"],
            metrics_dir=data["metrics_dir"],
        )


@dataclass(frozen=True, slots=True)
class Keys(_Message):
    """Move to these keys per mode, without reconnecting."""

    op = "keys"
    keys: dict[Mode, list[str]]


@dataclass(frozen=True, slots=True)
class NewCalendar(_Message):
    """The market calendar changed (the holidays came in): gaps are judged by this one now."""

    op = "calendar"
    calendar: Calendar

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "calendar": self.calendar.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(Calendar.from_json(data["calendar"]))


@dataclass(frozen=True, slots=True)
class Authorized(_Message):
    """The answer to :class:`Authorize`: the one-time socket URL."""

    op = "authorized"
    uri: str


# The error class of each reason, to raise in the feed what the supervisor caught.
_ERROR_OF_REASON: dict[str, type[UpstoxError]] = {cls.reason: cls for cls in UpstoxError.__subclasses__()}


@dataclass(frozen=True, slots=True)
class AuthorizeFailed(_Message):
    """The answer to :class:`Authorize` when Upstox refused or could not be reached."""

    op = "authorize_failed"
    reason: UpstoxReason
    message: str
    retry_after_s: float | None

    @classmethod
    def of(cls, error: UpstoxError) -> AuthorizeFailed:
        return cls(error.reason, str(error), error.retry_after_s)

    def error(self) -> UpstoxError:
        """The error the supervisor caught, to raise in the feed."""
        return _ERROR_OF_REASON[self.reason](self.message, retry_after_s=self.retry_after_s)


# -- feed → supervisor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authorize(_Message):
    """Get a one-time socket URL for the next connection attempt."""

    op = "authorize"


@dataclass(frozen=True, slots=True)
class Connected(_Message):
    """The connection subscribed at ``at``: a gap it recorded follows through the journal."""

    op = "connected"
    at: datetime


@dataclass(frozen=True, slots=True)
class Disconnected(_Message):
    """The connection's socket closed at ``at``; it is reconnecting (or waiting for journal room)."""

    op = "disconnected"
    at: datetime


@dataclass(frozen=True, slots=True)
class MarketInfo(_Message):
    """Upstox's ``market_info`` as the connection heard it at ``at``: segment -> normal-session status."""

    op = "market_info"
    statuses: dict[str, str]
    at: datetime


Message = (
    Stop
    | Drain
    | WriterSpec
    | FeedSpec
    | Keys
    | NewCalendar
    | Authorized
    | AuthorizeFailed
    | Authorize
    | Connected
    | Disconnected
    | MarketInfo
)
Spec = FeedSpec | WriterSpec
OPS: dict[str, type[Message]] = {
    cls.op: cls
    for cls in (
        Stop, Drain, WriterSpec, FeedSpec, Keys, NewCalendar, Authorized, AuthorizeFailed, Authorize, Connected,
        Disconnected, MarketInfo,
    )
}  # fmt: skip


def parse(data: dict[str, Any]) -> Message:
    """The message a channel line holds; raises ValueError for one this version does not know."""
    cls = OPS.get(data.get("op", ""))
    if cls is None:
        raise ValueError(f"unknown channel message {data.get('op')!r}")
    return cls.from_json(data)
