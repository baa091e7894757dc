"""Every channel message survives the trip through JSON, and says nothing secret in a repr."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from collector.core.calendar import Calendar, Holiday
from collector.exceptions import UPSTOX_REASONS, RateLimited, UpstoxError
from collector.ipc.messages import (
    OPS,
    Authorize,
    Authorized,
    AuthorizeFailed,
    Connected,
    Disconnected,
    Drain,
    FeedSpec,
    Keys,
    MarketInfo,
    Message,
    NewCalendar,
    Stop,
    WriterSpec,
    parse,
)
from tests.support.options import feed_options, journal_options, writer_options

AT = datetime(2026, 11, 20, 4, 0, 30, tzinfo=UTC)
CALENDAR = Calendar(holidays=[Holiday(AT.date(), frozenset({"NSE"}), (), "a holiday")])
EXAMPLES: list[Message] = [
    Stop(),
    Drain(),
    Authorize(),
    Authorized("wss://example/feed?code=1"),
    AuthorizeFailed("429", "authorize answered 429", 1.5),
    Keys({"full": ["NSE_FO|1"], "ltpc": ["NSE_EQ|2", "NSE_EQ|3"]}),
    NewCalendar(CALENDAR),
    Connected(AT),
    Disconnected(AT),
    MarketInfo({"NSE_EQ": "NORMAL_OPEN", "MCX_FO": "NORMAL_CLOSE"}, AT),
    FeedSpec(
        connection=1, keys={"full": ["NSE_FO|1"]}, journal_dir="/j/1", options=feed_options(),
        journal=journal_options(), calendar=CALENDAR, since=AT, log_level="INFO", metrics_dir="/m",
    ),
    FeedSpec(
        connection=0, keys={}, journal_dir="/j/0", options=feed_options(), journal=journal_options(),
        calendar=None, since=None, log_level="DEBUG", metrics_dir=None,
    ),
    WriterSpec(
        connection=1, journal_dir="/j/1", database_url="postgresql://u:hunter2@h/db",
        options=writer_options(), log_level="INFO", metrics_dir="/m",
    ),
]  # fmt: skip


def _same(a: Message, b: Message) -> bool:
    # Calendars compare by what they say, not by identity.
    return json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_json(message: Message) -> None:
    line = json.dumps(message.to_json())
    back = parse(json.loads(line))
    assert type(back) is type(message) and _same(back, message)
    if not isinstance(message, NewCalendar | FeedSpec):
        assert back == message


def test_every_op_is_listed_once_and_has_an_example() -> None:
    assert len(OPS) == len({cls.op for cls in OPS.values()})
    assert {type(m) for m in EXAMPLES} == set(OPS.values())


def test_an_unknown_op_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown channel message"):
        parse({"op": "reboot"})


def test_the_database_url_never_shows_in_a_repr() -> None:
    spec = next(m for m in EXAMPLES if isinstance(m, WriterSpec))
    assert "hunter2" not in repr(spec) and "hunter2" in json.dumps(spec.to_json())


@pytest.mark.parametrize("reason", UPSTOX_REASONS)
def test_an_authorize_failure_is_raised_in_the_feed_as_the_error_the_supervisor_caught(reason: str) -> None:
    caught = next(cls for cls in UpstoxError.__subclasses__() if cls.reason == reason)("it failed")
    error = parse(AuthorizeFailed.of(caught).to_json()).error()  # type: ignore[union-attr]
    assert type(error) is type(caught) and str(error) == "it failed"
    limited = parse(AuthorizeFailed.of(RateLimited("slow down", retry_after_s=2.0)).to_json())
    assert limited.error().retry_after_s == 2.0  # type: ignore[union-attr]
