"""Connection events: what the feed journals is what the writer stores, and old journals still read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collector.core.records import FeedSession, Gap
from collector.journal.events import decode_event, encode_event

T0 = datetime(2026, 11, 20, 4, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "event",
    [
        FeedSession(1, T0, T0 + timedelta(minutes=5), "code 1006"),
        Gap(0, T0, T0 + timedelta(seconds=42), ["NSE_EQ", "NSE_FO"], "reconnect", ["NSE_EQ|1", "NSE_FO|2"]),
        Gap(0, T0, T0 + timedelta(seconds=1), ["MCX_FO"], "start", []),
    ],
)
def test_an_event_reads_back_as_written(event: FeedSession | Gap) -> None:
    assert decode_event(encode_event(event)) == event


def test_the_format_is_the_one_journals_on_disk_hold() -> None:
    # Written by earlier versions, and by this one: the same bytes.
    session = (
        b'{"type":"session","connection":1,"connected_at":"2026-11-20T04:00:30+00:00",'
        b'"disconnected_at":"2026-11-20T04:05:30+00:00","reason":"closed"}'
    )
    assert encode_event(decode_event(session)) == session
    # A gap journaled before gaps named their instruments.
    old_gap = (
        b'{"type":"gap","connection":0,"started_at":"2026-11-20T04:00:30+00:00",'
        b'"ended_at":"2026-11-20T04:01:30+00:00","segments":["NSE_EQ"],"reason":"reconnect"}'
    )
    assert decode_event(old_gap) == Gap(0, T0, T0 + timedelta(minutes=1), ["NSE_EQ"], "reconnect", [])


def test_an_unknown_event_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        decode_event(b'{"type":"reboot"}')
