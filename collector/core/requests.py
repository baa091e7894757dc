"""Client -> server requests: encoding, chunking, and the moves between two sets of keys. No I/O.

Requests are UTF-8 JSON sent as *binary* frames (opcode 2)::

    {"guid": "...", "method": "sub" | "unsub" | "change_mode",
     "data": {"mode": "ltpc" | "option_greeks" | "full" | "full_d30",
              "instrumentKeys": ["NSE_FO|45450", ...]}}
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

from collector.core.records import Mode

__all__ = ["Method", "chunked", "encode_request", "plan_changes"]

Method = Literal["sub", "unsub", "change_mode"]


def encode_request(method: Method, keys: list[str], mode: Mode | None = None) -> bytes:
    """Encode one request; ``mode`` is required for sub and change_mode."""
    if method != "unsub" and mode is None:
        raise ValueError(f"{method} needs a mode")
    data: dict[str, object] = {"instrumentKeys": keys}
    if mode is not None and method != "unsub":
        data["mode"] = mode
    body = {"guid": uuid.uuid4().hex, "method": method, "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


def chunked(keys: list[str], size: int) -> Iterator[list[str]]:
    """Split keys into requests of at most ``size`` keys."""
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


def plan_changes(
    current: Mapping[Mode, Iterable[str]], wanted: Mapping[Mode, Iterable[str]]
) -> tuple[list[str], dict[Mode, list[str]], dict[Mode, list[str]]]:
    """Requests that move a connection from ``current`` to ``wanted`` keys.

    Returns (keys to unsubscribe, keys per new mode for change_mode, keys per
    mode to subscribe), to be sent in that order: no moment in between holds
    more keys per mode than ``wanted`` does.
    """
    cur = {k: m for m, keys in current.items() for k in keys}
    new = {k: m for m, keys in wanted.items() for k in keys}
    unsub = sorted(k for k in cur if k not in new)
    moves: dict[Mode, list[str]] = {}
    subs: dict[Mode, list[str]] = {}
    for key, mode in sorted(new.items()):
        if key not in cur:
            subs.setdefault(mode, []).append(key)
        elif cur[key] != mode:
            moves.setdefault(mode, []).append(key)
    return unsub, moves, subs
