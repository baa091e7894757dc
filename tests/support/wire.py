"""A tiny protobuf encoder for byte fixtures, independent of the project's .proto.

Frames built with it follow the field numbers of shared/docs/upstox-v3.md
directly, so a wrong number in our schema makes the decoder tests fail.
:func:`frame` wraps feeds into a ``FeedResponse``; :func:`full_market` is one
full-mode feed with every field set.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # a receive time
TS = 1_795_500_000_123  # currentTs
LTT = 1_795_499_999_456
LIVE, MARKET_INFO = 1, 2


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vint(no: int, value: int) -> bytes:
    return varint(no << 3) + varint(value)


def f64(no: int, value: float) -> bytes:
    return varint((no << 3) | 1) + struct.pack("<d", value)


def msg(no: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return varint((no << 3) | 2) + varint(len(body)) + body


def text(no: int, value: str) -> bytes:
    return msg(no, value.encode())


def entry(no: int, key: str, *value: bytes) -> bytes:
    """A map<string, Message> entry: key is field 1, value field 2."""
    return msg(no, text(1, key), msg(2, *value))


def ltpc(ltp: float, ltt: int, ltq: int, cp: float) -> bytes:
    return f64(1, ltp) + vint(2, ltt) + vint(3, ltq) + f64(4, cp)


def quote(bid_q: int, bid_p: float, ask_q: int, ask_p: float) -> bytes:
    return vint(1, bid_q) + f64(2, bid_p) + vint(3, ask_q) + f64(4, ask_p)


def greeks(delta: float, theta: float, gamma: float, vega: float, rho: float) -> bytes:
    return f64(1, delta) + f64(2, theta) + f64(3, gamma) + f64(4, vega) + f64(5, rho)


def ohlc(interval: str, o: float, h: float, low: float, c: float, vol: int, ts: int) -> bytes:
    return text(1, interval) + f64(2, o) + f64(3, h) + f64(4, low) + f64(5, c) + vint(6, vol) + vint(7, ts)


def frame(*parts: bytes, type_: int | None = LIVE, ts: int = TS) -> bytes:
    head = vint(1, type_) if type_ is not None else b""
    return head + b"".join(parts) + vint(3, ts)


def full_market(levels: int, request_mode: int) -> bytes:
    depth = b"".join(msg(1, quote(100 + i, 99.5 - i, 200 + i, 100.5 + i)) for i in range(levels))
    mff = (
        msg(1, ltpc(100.0, LTT, 50, 98.0))
        + msg(2, depth)
        + msg(3, greeks(0.5, -3.0, 0.01, 12.0, 1.5))
        + msg(4, msg(1, ohlc("I1", 99, 101, 98, 100, 500, 1_795_499_940_000)),
              msg(1, ohlc("1d", 95, 102, 94, 100, 90_000, 1_795_459_200_000)))
        + f64(5, 99.7) + vint(6, 123_456) + f64(7, 5000.0) + f64(8, 0.18)
        + f64(9, 1e5) + f64(10, 2e5)
    )  # fmt: skip
    return msg(2, msg(1, mff)) + vint(4, request_mode)
