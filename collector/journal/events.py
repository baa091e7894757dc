"""The connection events a feed journals beside its frames, and the writer stores. No I/O.

A journal record of kind ``EVENT`` (:mod:`collector.journal.format`) holds
one JSON object: a session (the connection was subscribed from
``connected_at`` to ``disconnected_at``, a row of ``feed_sessions``) or a gap
(it was down from ``started_at`` to ``ended_at`` while ``segments`` were
open, a row of ``feed_gaps``)::

    {"type": "session", "connection": 0, "connected_at": "<ISO 8601>",
     "disconnected_at": "<ISO 8601>", "reason": "code 1006"}
    {"type": "gap", "connection": 0, "started_at": "<ISO 8601>", "ended_at": "<ISO 8601>",
     "segments": ["NSE_FO"], "reason": "reconnect", "instruments": ["NSE_FO|45450"]}

Journals outlive versions of the collector: a gap written before
``instruments`` existed reads with none.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from collector.core.records import FeedSession, Gap

__all__ = ["decode_event", "encode_event"]


def encode_event(event: FeedSession | Gap) -> bytes:
    """The payload of the journal record that holds ``event``."""
    body: dict[str, Any]
    if isinstance(event, FeedSession):
        body = {
            "type": "session", "connection": event.connection, "connected_at": event.connected_at.isoformat(),
            "disconnected_at": event.disconnected_at.isoformat(), "reason": event.close_reason,
        }  # fmt: skip
    else:
        body = {
            "type": "gap", "connection": event.connection, "started_at": event.started_at.isoformat(),
            "ended_at": event.ended_at.isoformat(), "segments": event.segments, "reason": event.reason,
            "instruments": event.instruments,
        }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(payload: bytes) -> FeedSession | Gap:
    """The event a journal record holds; raises ValueError, KeyError or TypeError when it is not one."""
    e = json.loads(payload)
    if e["type"] == "session":
        return FeedSession(
            e["connection"], _time(e["connected_at"]), _time(e["disconnected_at"]), e["reason"]
        )
    if e["type"] == "gap":
        return Gap(
            e["connection"], _time(e["started_at"]), _time(e["ended_at"]), e["segments"], e["reason"],
            e.get("instruments", []),
        )  # fmt: skip
    raise ValueError(f"unknown event type {e['type']!r}")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
