"""Fuzz the decoder: random and mutated frames raise DecodeError or nothing."""

from __future__ import annotations

import random

from collector.decode import decode_frame
from collector.exceptions import DecodeError
from collector.simulator.market import SimMarket, generate_master
from tests.test_decode import NOW, frame, full_market
from tests.wire import entry, ltpc, msg, text, vint

ROUNDS = 30_000


def seeds() -> list[bytes]:
    from collector.proto import MarketDataFeedV3_pb2 as pb

    market = SimMarket(generate_master(8), seed=3)
    out = [
        frame(entry(2, "NSE_FO|1", full_market(5, 1))),
        frame(entry(2, "NSE_FO|2", full_market(30, 3))),
        frame(entry(2, "NSE_EQ|X", msg(1, ltpc(1.5, 1_700_000_000_000, 2, 1.0)))),
        frame(msg(4, msg(1, text(1, "NSE_FO"), vint(2, 2))), type_=2),
    ]
    for mode in ("ltpc", "full", "option_greeks", "full_d30"):
        m = pb.FeedResponse(type=pb.live_feed, currentTs=1_700_000_000_000)
        for key in list(market.instruments)[:20]:
            market.fill(m.feeds[key], market.instruments[key], mode)  # type: ignore[arg-type]
        out.append(m.SerializeToString())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif op == 3:
            del b[pos : pos + rng.randint(1, 16)]
        else:
            b = b[:pos]
    return bytes(b)


def test_random_and_mutated_frames_raise_only_decode_error() -> None:
    rng = random.Random(20261121)
    corpus = seeds()
    decoded = rejected = 0
    for i in range(ROUNDS):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        else:
            data = mutate(rng, rng.choice(corpus))
        try:
            decode_frame(data, NOW)
            decoded += 1
        except DecodeError:
            rejected += 1
    # Both outcomes must occur, or the fuzzer is not exercising the decoder.
    assert decoded > ROUNDS // 20 and rejected > ROUNDS // 20
