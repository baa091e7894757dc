from __future__ import annotations

import json

import pytest

from collector.core.requests import chunked, encode_request
from collector.core.shards import DEFAULT_LIMITS, shard_universe


def test_requests_are_json_with_guid_method_and_data() -> None:
    body = json.loads(encode_request("sub", ["NSE_FO|1", "NSE_FO|2"], "full"))
    assert body["method"] == "sub" and len(body["guid"]) == 32
    assert body["data"] == {"mode": "full", "instrumentKeys": ["NSE_FO|1", "NSE_FO|2"]}
    assert json.loads(encode_request("unsub", ["NSE_FO|1"]))["data"] == {"instrumentKeys": ["NSE_FO|1"]}
    with pytest.raises(ValueError):
        encode_request("change_mode", ["NSE_FO|1"])


def test_chunks() -> None:
    assert [len(c) for c in chunked([str(i) for i in range(1201)], 500)] == [500, 500, 201]


def keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}|{i}" for i in range(n)]


def test_single_mode_uses_alone_limit_and_spreads_evenly() -> None:
    shards, rejected = shard_universe({"full": keys("NSE_FO", 3000)}, 2)
    assert not rejected
    assert [s.size for s in shards] == [1500, 1500]


def test_mixed_modes_respect_mixed_limits() -> None:
    universe = {"full": keys("NSE_FO", 3000), "ltpc": keys("NSE_EQ", 500)}
    shards, rejected = shard_universe(universe, 2)
    for shard in shards:
        counts = {m: len(k) for m, k in shard.keys.items()}
        assert DEFAULT_LIMITS.fits(counts)  # type: ignore[arg-type]
        if len(counts) > 1:
            assert counts.get("full", 0) <= 1500 and counts.get("ltpc", 0) <= 2000
    assert sum(s.size for s in shards) + sum(len(v) for v in rejected.values()) == 3500
    assert not rejected


def test_universe_beyond_all_connections_is_rejected_not_overfilled() -> None:
    shards, rejected = shard_universe({"full": keys("NSE_FO", 4500)}, 2)
    assert [s.size for s in shards] == [2000, 2000]
    assert len(rejected["full"]) == 500


def test_key_in_two_modes_keeps_the_richer() -> None:
    shards, _ = shard_universe({"full": ["NSE_FO|1"], "ltpc": ["NSE_FO|1", "NSE_EQ|A"]}, 1)
    assert shards[0].keys == {"full": ["NSE_FO|1"], "ltpc": ["NSE_EQ|A"]}


def test_full_d30_is_limited_to_50_per_connection() -> None:
    shards, rejected = shard_universe({"full_d30": keys("NSE_FO", 120)}, 2)
    assert [s.size for s in shards] == [50, 50] and len(rejected["full_d30"]) == 20


def test_packs_modes_apart_when_spreading_would_reject_keys() -> None:
    # Even spread gives 1600+1600 full, and then no connection can take ltpc
    # (mixed caps full at 1500); packing puts ltpc beside the smaller full share.
    universe = {"full": keys("NSE_FO", 3200), "ltpc": keys("NSE_EQ", 1800)}
    shards, rejected = shard_universe(universe, 2)
    assert not rejected
    assert sorted((len(s.keys.get("full", [])), len(s.keys.get("ltpc", []))) for s in shards) == [
        (1200, 1800),
        (2000, 0),
    ]
