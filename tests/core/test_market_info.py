"""The feed's own reading of market_info (core/market.py, no protobuf) against protobuf's decoding."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from collector.core.calendar import SEGMENTS
from collector.core.decode import decode_frame
from collector.core.market import MARKET_STATUSES, segment_status
from collector.exceptions import DecodeError
from collector.proto import MarketDataFeedV3_pb2 as pb
from tests.core.test_decode_fuzz import Generator, mutate_bytes, mutate_structure, seeds

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def protobufs(frame: bytes) -> dict[str, str]:
    """segmentStatus as the writer reads it (protobuf, collector.core.decode)."""
    return {s.segment: s.status for s in decode_frame(frame, NOW).statuses if s.session == "normal"}


def market_info(statuses: dict[str, int], *, extra: bool = False) -> bytes:
    """A market_info frame as Upstox and the simulator serialize one."""
    msg = pb.FeedResponse(type=pb.market_info, currentTs=1_795_500_000_000)
    for segment, status in statuses.items():
        msg.marketInfo.segmentStatus[segment] = status  # type: ignore[assignment]
    if extra:  # the newer per-session maps, and a tick: read past, never mistaken for segmentStatus
        msg.marketInfo.preOpenSessionStatus["NSE_FO"].status = "PRE_OPEN_START"
        msg.marketInfo.casMarketStatus["NSE_EQ"].updatedTime = 1_795_500_000_000
        msg.feeds["NSE_EQ|X"].ltpc.ltp = 1.0
    return msg.SerializeToString()


def test_every_segment_and_status_reads_as_protobuf_reads_it() -> None:
    for shift in range(len(MARKET_STATUSES)):
        statuses = {s: (i + shift) % len(MARKET_STATUSES) for i, s in enumerate(SEGMENTS)}
        for extra in (False, True):
            frame = market_info(statuses, extra=extra)
            assert segment_status(frame) == protobufs(frame)
            assert set(segment_status(frame).values()) <= set(MARKET_STATUSES)


@pytest.mark.parametrize("status", [6, 99, -1, 2**31 - 1, -(2**31)])
def test_a_status_the_schema_does_not_know_reads_as_its_number(status: int) -> None:
    frame = market_info({"NSE_FO": status, "NSE_EQ": 2})
    assert segment_status(frame) == protobufs(frame) == {"NSE_FO": str(status), "NSE_EQ": "NORMAL_OPEN"}


def test_generated_and_mutated_frames_read_alike_wherever_protobuf_reads_them() -> None:
    rng = random.Random(7)
    gen = Generator(rng)
    real = seeds()
    compared = with_statuses = 0
    for i in range(20_000):
        if i % 3 == 0:
            frame = gen.frame()
        elif i % 3 == 1:
            frame = mutate_structure(rng, rng.choice(real), gen)
        else:
            frame = mutate_bytes(rng, rng.choice(real))
        try:
            expected = protobufs(frame)
        except DecodeError:
            continue  # the writer rejects the frame; the feed may read less of it, or nothing
        assert segment_status(frame) == expected, frame.hex()
        compared += 1
        with_statuses += bool(expected)
    assert compared > 5_000 and with_statuses > 500, (compared, with_statuses)


def test_a_malformed_frame_is_a_value_error() -> None:
    frame = market_info({"NSE_FO": 2})
    for cut in range(1, len(frame)):
        try:
            segment_status(frame[:cut])
        except ValueError:
            pass
