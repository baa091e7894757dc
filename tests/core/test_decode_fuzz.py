"""Fuzz the decoder: whatever the bytes, ``decode_frame`` returns a frame or raises DecodeError.

Four kinds of input, in turn:

- **generated** frames: every message of the V3 schema (field numbers from
  shared/docs/upstox-v3.md, encoded with ``tests/wire.py``, not with our
  generated code) with fields present or absent at random, repeated fields up
  to past 30 levels, and edge values: timestamps at and beyond year 9999,
  negative and 64-bit numbers, NaN and infinities, invalid UTF-8, unknown
  fields, enums beyond the schema, and now and then the wrong wire type;
- **structure-aware** mutations of real frames (the simulator's and the
  protocol examples): fields dropped, repeated, swapped, retyped or given edge
  values, recursively inside nested messages, lengths kept consistent;
- **byte** mutations of the same: bits flipped, bytes inserted, cut, truncated;
- **random** bytes.

CI runs ``COLLECTOR_FUZZ_INPUTS`` inputs (default 30 000, a few seconds). The
long run, a million inputs, is one command that prints the count and the time::

    python -m tests.core.test_decode_fuzz 1000000     # or:
    COLLECTOR_FUZZ_INPUTS=1000000 pytest tests/core/test_decode_fuzz.py -s

``COLLECTOR_FUZZ_SEED`` picks another seed (the default is fixed, so a failure
reproduces). A failure prints the offending inputs in hex.

Why not hypothesis: it would be a new dependency, and at a million inputs its
per-example bookkeeping (shrinking, database, health checks) costs more than
the decoder; a seeded generator that knows the schema runs ~10k inputs/s and
reaches every branch of ``decode.py`` (the test asserts the frames it
produces carry ticks, bars and statuses, not only rejections).
"""

from __future__ import annotations

import math
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from datetime import date

from collector.core.decode import decode_frame
from collector.exceptions import DecodeError
from collector.simulator.market import SimMarket, generate_master
from tests.support.wire import NOW, entry, frame, full_market, ltpc, msg, text, varint, vint

CI_INPUTS = 30_000
DEFAULT_SEED = 20261121

# -- the schema, from the protocol document ----------------------------------------------
# kind: "double", "int64", "string", "bool", "enum", or a message name; "*" marks repeated,
# "map:<value kind>" a map<string, value> (entries are messages: key 1, value 2).
MARKET_FULL_FEED = (  # fields 1 to 16
    "LTPC MarketLevel OptionGreeks MarketOHLC double int64 double double double double double double "
    "int64 int64 int64 bool"
)
SCHEMA: dict[str, dict[int, str]] = {
    "FeedResponse": {1: "enum", 2: "map:Feed", 3: "int64", 4: "MarketInfo"},
    "Feed": {1: "LTPC", 2: "FullFeed", 3: "FirstLevelWithGreeks", 4: "enum"},
    "LTPC": {1: "double", 2: "int64", 3: "int64", 4: "double", 5: "DoubleValue"},
    "DoubleValue": {1: "double"},
    "FullFeed": {1: "MarketFullFeed", 2: "IndexFullFeed"},
    "MarketFullFeed": dict(enumerate(MARKET_FULL_FEED.split(), start=1)),
    "IndexFullFeed": {1: "LTPC", 2: "MarketOHLC"},
    "MarketLevel": {1: "*Quote"},
    "Quote": {1: "int64", 2: "double", 3: "int64", 4: "double"},
    "OptionGreeks": {1: "double", 2: "double", 3: "double", 4: "double", 5: "double"},
    "MarketOHLC": {1: "*OHLC"},
    "OHLC": {1: "string", 2: "double", 3: "double", 4: "double", 5: "double", 6: "int64", 7: "int64"},
    "FirstLevelWithGreeks": {1: "LTPC", 2: "Quote", 3: "OptionGreeks", 4: "int64", 5: "double", 6: "double"},
    "MarketInfo": {1: "map:enum", 2: "map:StatusInfo", 3: "map:StatusInfo"},
    "StatusInfo": {1: "string", 2: "int64"},
}
ONEOFS = {"Feed": (1, 2, 3), "FullFeed": (1, 2)}  # one member at a time, mostly

MAX_MS = 253_402_300_799_999  # the decoder's limit: 9999-12-31
NOW_MS = 1_795_500_000_000
INTS = (0, 1, -1, 2, 127, 128, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), NOW_MS, MAX_MS, MAX_MS + 1)
DOUBLES = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 2900.05)
STRINGS = (
    b"", b"NSE_FO|36708", b"NSE_EQ|INE002A01018", b"NSE_INDEX|Nifty 50", b"I1", b"1d", b"I30",
    b"NSE_FO", "नमस्ते|₹".encode(), b"\x00", b"x" * 300,
)  # fmt: skip
BAD_UTF8 = (b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")


def tag(no: int, wire: int) -> bytes:
    return varint((no << 3) | wire)


def length_delimited(no: int, body: bytes) -> bytes:
    return tag(no, 2) + varint(len(body)) + body


class Generator:
    """Random frames that follow the schema, with edge values and occasional lies."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lies = 0.0  # per value: the chance of a wrong wire type, unknown field or bad UTF-8

    def int64(self) -> int:
        r = self.rng
        return r.choice(INTS) if r.random() < 0.5 else r.randrange(-(2**63), 2**64)

    def double(self) -> float:
        r = self.rng
        if r.random() < 0.5:
            return r.choice(DOUBLES)
        return struct.unpack("<d", r.randbytes(8))[0] if r.random() < 0.3 else r.uniform(-1e6, 1e6)

    def string(self) -> bytes:
        r = self.rng
        if r.random() < self.lies:
            return r.choice(BAD_UTF8) if r.random() < 0.5 else r.randbytes(r.randrange(1, 24))
        if r.random() < 0.8:
            return r.choice(STRINGS)
        return "".join(chr(r.randrange(32, 0x3000)) for _ in range(r.randrange(0, 12))).encode(
            "utf-8", "replace"
        )

    def value(self, no: int, kind: str, depth: int) -> bytes:
        r = self.rng
        if r.random() < self.lies:  # the wrong wire type, or a field we do not know
            return self.junk_field(no if r.random() < 0.5 else r.randrange(17, 2**29))
        if kind == "double":
            return tag(no, 1) + struct.pack("<d", self.double())
        if kind == "int64":
            return tag(no, 0) + varint(self.int64() % 2**64)
        if kind == "bool":
            return tag(no, 0) + varint(r.choice((0, 1, 2, 2**63)))
        if kind == "enum":
            if r.random() < 0.8:
                return tag(no, 0) + varint(r.choice((0, 1, 2, 3)))
            return tag(no, 0) + varint(r.choice((4, 5, 6, 7, 2**31, 2**64 - 1)))
        if kind == "string":
            return length_delimited(no, self.string())
        if kind.startswith("map:"):
            value_kind = kind[4:]
            out = b""
            for _ in range(r.choice((0, 1, 1, 2, 3, 8))):
                body = length_delimited(1, self.string()) if r.random() < 0.95 else b""
                if r.random() < 0.95:
                    body += self.value(2, value_kind, depth + 1)
                out += length_delimited(no, body)
            return out
        return length_delimited(no, self.message(kind, depth + 1))

    def junk_field(self, no: int) -> bytes:
        r = self.rng
        wire = r.choice((0, 1, 2, 5, 3, 4, 6, 7))
        if wire == 0:
            return tag(no, 0) + varint(r.randrange(2**64))
        if wire == 1:
            return tag(no, 1) + r.randbytes(8)
        if wire == 5:
            return tag(no, 5) + r.randbytes(4)
        if wire == 2:
            return length_delimited(no, r.randbytes(r.randrange(0, 12)))
        return tag(no, wire)  # groups and invalid wire types

    def message(self, name: str, depth: int = 0) -> bytes:
        r = self.rng
        if depth > 8:
            return b""
        fields = SCHEMA[name]
        present = [no for no in fields if r.random() < 0.6]
        if name in ONEOFS and r.random() < 0.9:
            members = ONEOFS[name]
            keep = r.choice(members)
            present = [no for no in present if no not in members or no == keep]
            if keep not in present and r.random() < 0.8:
                present.append(keep)
        parts: list[bytes] = []
        for no in present:
            kind = fields[no]
            if kind.startswith("*"):
                count = r.choice((0, 1, 2, 5, 5, 6, 30, 31, 40))
                parts.extend(self.value(no, kind[1:], depth) for _ in range(count))
            else:
                parts.append(self.value(no, kind, depth))
        if r.random() < 0.1:
            r.shuffle(parts)  # protobuf allows any order, and repeats: the last wins
        return b"".join(parts)

    def frame(self) -> bytes:
        # Half the frames are honest (they reach the decoder's field handling), half tell lies.
        self.lies = 0.0 if self.rng.random() < 0.5 else 0.03
        body = self.message("FeedResponse")
        if self.rng.random() < 0.7:  # a plausible currentTs, so timestamps do not all fail
            body += tag(3, 0) + varint(NOW_MS)
        return body


# -- structure-aware mutation -----------------------------------------------------------


def split_fields(data: bytes) -> list[tuple[int, int, bytes]] | None:
    """(field number, wire type, encoded value) of each field, or None if it is not a message."""
    out: list[tuple[int, int, bytes]] = []
    i, n = 0, len(data)

    def read_varint() -> int | None:
        nonlocal i
        shift = value = 0
        while i < n and shift < 70:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        return None

    while i < n:
        key = read_varint()
        if key is None:
            return None
        no, wire = key >> 3, key & 7
        start = i
        if wire == 0:
            if read_varint() is None:
                return None
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size = read_varint()
            if size is None:
                return None
            start = i
            i += size
        else:
            return None
        if i > n:
            return None
        out.append((no, wire, data[start:i]))
    return out


def join_fields(fields: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(
        length_delimited(no, value) if wire == 2 else tag(no, wire) + value for no, wire, value in fields
    )


def mutate_structure(rng: random.Random, data: bytes, gen: Generator, depth: int = 0) -> bytes:
    fields = split_fields(data)
    if fields is None or not fields:
        return data
    for _ in range(rng.randint(1, 3)):
        if not fields:
            break
        op = rng.randrange(7)
        k = rng.randrange(len(fields))
        no, wire, value = fields[k]
        if op == 0:
            del fields[k]
        elif op == 1:
            fields.insert(rng.randrange(len(fields) + 1), fields[k])
        elif op == 2:
            j = rng.randrange(len(fields))
            fields[k], fields[j] = fields[j], fields[k]
        elif op == 3 and wire == 2 and depth < 6:  # into a nested message, lengths kept right
            fields[k] = (no, 2, mutate_structure(rng, value, gen, depth + 1))
        elif op == 4:  # an edge value of the field's wire type
            if wire == 0:
                fields[k] = (no, 0, varint(rng.choice(INTS) % 2**64))
            elif wire == 1:
                fields[k] = (no, 1, struct.pack("<d", rng.choice(DOUBLES)))
            elif wire == 2:
                fields[k] = (no, 2, rng.choice(STRINGS))
        elif op == 5:  # the same value under another wire type
            other = rng.choice((0, 1, 2, 5))
            fields[k] = (no, other, value if other == 2 else varint(len(value)))
        else:  # a field from the schema's richest messages, anywhere
            fields.insert(k, (no, 2, gen.message(rng.choice(("LTPC", "MarketFullFeed", "OHLC")), 6)))
    return join_fields(fields)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 6))
        elif op == 3:
            del b[pos : pos + rng.randint(1, 16)]
        else:
            b = b[:pos]
    return bytes(b)


def seeds() -> list[bytes]:
    from collector.proto import MarketDataFeedV3_pb2 as pb

    # A fixed day and clock: the same seed gives the same inputs on every run.
    market = SimMarket(generate_master(8, today=date(2026, 11, 20)), seed=3, start_ms=1_795_500_000_000)
    out = [
        frame(entry(2, "NSE_FO|1", full_market(5, 1))),
        frame(entry(2, "NSE_FO|2", full_market(30, 3))),
        frame(entry(2, "NSE_EQ|X", msg(1, ltpc(1.5, 1_700_000_000_000, 2, 1.0)))),
        frame(msg(4, msg(1, text(1, "NSE_FO"), vint(2, 2))), type_=2),
    ]
    for mode in ("ltpc", "full", "option_greeks", "full_d30"):
        m = pb.FeedResponse(type=pb.live_feed, currentTs=1_700_000_000_000)
        for key in list(market.instruments)[:20]:
            market.fill(m.feeds[key], market.instruments[key], mode)
        out.append(m.SerializeToString(deterministic=True))  # map order fixed, as for a seed
    return out


# -- the run ------------------------------------------------------------------------------


@dataclass
class Outcome:
    inputs: int = 0
    decoded: int = 0
    with_ticks: int = 0
    with_bars: int = 0
    with_statuses: int = 0
    rejected: int = 0
    seconds: float = 0.0
    escaped: list[tuple[bytes, BaseException]] = field(default_factory=list)

    def line(self, seed: int) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (
            f"decoder fuzz: {self.inputs} inputs in {self.seconds:.1f} s ({rate:.0f}/s), seed {seed}: "
            f"{self.decoded} decoded ({self.with_ticks} with ticks, {self.with_bars} with bars, "
            f"{self.with_statuses} with statuses), {self.rejected} DecodeError, "
            f"{len(self.escaped)} other exceptions"
        )


def fuzz(inputs: int, seed: int = DEFAULT_SEED) -> Outcome:
    rng = random.Random(seed)
    gen = Generator(rng)
    corpus = seeds()
    out = Outcome()
    started = time.perf_counter()
    for i in range(inputs):
        kind = i % 4
        if kind == 0:
            data = gen.frame()
        elif kind == 1:
            data = mutate_structure(rng, rng.choice(corpus), gen)
        elif kind == 2:
            data = mutate_bytes(rng, rng.choice(corpus) if rng.random() < 0.7 else gen.frame())
        else:
            data = rng.randbytes(rng.randint(0, 200))
        try:
            f = decode_frame(data, NOW)
        except DecodeError:
            out.rejected += 1
        except Exception as exc:  # the finding: anything else escaped
            if len(out.escaped) < 20:
                out.escaped.append((data, exc))
            else:
                out.escaped.append((b"", exc))
        else:
            out.decoded += 1
            out.with_ticks += bool(f.ticks)
            out.with_bars += bool(f.bars)
            out.with_statuses += bool(f.statuses)
    out.inputs = inputs
    out.seconds = time.perf_counter() - started
    return out


def _report(outcome: Outcome) -> str:
    return "\n".join(f"{type(e).__name__}: {e}\n  input: {d.hex()}" for d, e in outcome.escaped[:5] if d)


def test_generated_and_mutated_frames_raise_only_decode_error() -> None:
    inputs = int(os.environ.get("COLLECTOR_FUZZ_INPUTS", CI_INPUTS))
    seed = int(os.environ.get("COLLECTOR_FUZZ_SEED", DEFAULT_SEED))
    outcome = fuzz(inputs, seed)
    print(outcome.line(seed))
    assert not outcome.escaped, _report(outcome)
    # Every outcome must occur often, or the fuzzer is not reaching the decoder's branches.
    share = inputs // 50
    assert outcome.decoded > share and outcome.rejected > share, outcome.line(seed)
    assert min(outcome.with_ticks, outcome.with_bars, outcome.with_statuses) > inputs // 500, outcome.line(
        seed
    )


def test_the_schema_generator_makes_frames_the_decoder_reads() -> None:
    # Many generated frames decode: the generator speaks the protocol, not only noise.
    rng = random.Random(1)
    gen = Generator(rng)
    decoded = 0
    for _ in range(2000):
        try:
            decode_frame(gen.frame(), NOW)
            decoded += 1
        except DecodeError:
            pass
    assert decoded > 500


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    seed = int(os.environ.get("COLLECTOR_FUZZ_SEED", DEFAULT_SEED))
    result = fuzz(count, seed)
    print(result.line(seed))
    if result.escaped:
        print(_report(result), file=sys.stderr)
        sys.exit(1)
