"""Upstox's subscription limits, and spreading a universe of keys over connections. No I/O.

A shard is the keys one connection subscribes, by mode. The supervisor plans
shards within Upstox's limits at start-up (:func:`shard_universe`) and moves
running connections to a new universe with little churn (:func:`plan_universe`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector.core.records import MODES, Mode

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Shard",
    "plan_universe",
    "room",
    "segment_of",
    "shard_universe",
]


def segment_of(key: str) -> str:
    """``NSE_FO|45450`` -> ``NSE_FO``."""
    return key.partition("|")[0]


@dataclass(frozen=True, slots=True)
class Limits:
    """Keys per connection for each mode, alone and when modes are mixed.

    Defaults are Upstox's documented limits (May 2025). Whether they count per
    connection or per user is unconfirmed; we apply them per connection and
    never put more keys on a connection than its mode mix allows.
    """

    alone: Mapping[Mode, int]
    mixed: Mapping[Mode, int]

    def fits(self, counts: Mapping[Mode, int]) -> bool:
        """Whether a connection carrying ``counts`` keys per mode is within limits."""
        used = [m for m, n in counts.items() if n > 0]
        table = self.alone if len(used) <= 1 else self.mixed
        return all(counts[m] <= table.get(m, 0) for m in used)


DEFAULT_LIMITS = Limits(
    alone={"ltpc": 5000, "option_greeks": 3000, "full": 2000, "full_d30": 50},
    mixed={"ltpc": 2000, "option_greeks": 2000, "full": 1500, "full_d30": 50},
)


@dataclass(slots=True)
class Shard:
    """The keys one connection subscribes, by mode."""

    shard_id: int
    keys: dict[Mode, list[str]]

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def segments(self) -> set[str]:
        return {segment_of(k) for keys in self.keys.values() for k in keys}


def shard_universe(
    universe: Mapping[Mode, Iterable[str]], connections: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Shard], dict[Mode, list[str]]]:
    """Spread a universe over at most ``connections`` connections within ``limits``.

    Keys are placed mode by mode (largest first). The first try puts each key
    on the least loaded connection that can take it, which evens the load; if
    that leaves keys out (mixing modes lowers every mode's limit), a first-fit
    placement, which keeps modes apart where it can, is used when it fits more.
    The result is stable for the same universe. A key in several modes keeps
    the first (richest) mode. Returns the shards (empty ones dropped) and the
    keys that fit nowhere.
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    seen: set[str] = set()
    per_mode: dict[Mode, list[str]] = {}
    modes: tuple[Mode, ...] = ("full_d30", "full", "option_greeks", "ltpc")
    for mode in modes:
        keys = sorted(set(universe.get(mode, ())) - seen)
        seen.update(keys)
        if keys:
            per_mode[mode] = keys
    even = _place(per_mode, connections, limits, spread=True)
    if not even[1]:
        return even
    packed = _place(per_mode, connections, limits, spread=False)
    n_even = sum(len(v) for v in even[1].values())
    n_packed = sum(len(v) for v in packed[1].values())
    return packed if n_packed < n_even else even


def _place(
    per_mode: dict[Mode, list[str]], connections: int, limits: Limits, *, spread: bool
) -> tuple[list[Shard], dict[Mode, list[str]]]:
    counts: list[dict[Mode, int]] = [dict.fromkeys(MODES, 0) for _ in range(connections)]
    shards = [Shard(i, {}) for i in range(connections)]
    rejected: dict[Mode, list[str]] = {}
    order = list(range(connections))
    for mode in sorted(per_mode, key=lambda m: -len(per_mode[m])):
        for key in per_mode[mode]:
            if spread:
                order.sort(key=lambda j: (sum(counts[j].values()), j))
            for i in order:
                counts[i][mode] += 1
                if limits.fits(counts[i]):
                    shards[i].keys.setdefault(mode, []).append(key)
                    break
                counts[i][mode] -= 1
            else:
                rejected.setdefault(mode, []).append(key)
    return [s for s in shards if s.size], rejected


def room(limits: Limits, counts: Mapping[Mode, int], mode: Mode) -> int:
    """How many more keys of ``mode`` a connection holding ``counts`` can take."""
    others = [m for m in MODES if m != mode and counts.get(m, 0) > 0]
    if not others:
        return max(limits.alone[mode] - counts.get(mode, 0), 0)
    if not all(counts.get(m, 0) <= limits.mixed[m] for m in others):
        return 0
    return max(limits.mixed[mode] - counts.get(mode, 0), 0)


def plan_universe(
    current: list[Shard],
    universe: Mapping[Mode, Iterable[str]],
    connections: int,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[Shard], dict[Mode, list[str]]]:
    """Move running connections to a new universe with as little churn as possible.

    Keys that left are dropped; a key whose mode changed stays on its
    connection if the new mode fits there; new keys go to the least loaded
    connection with room (connections not running yet count as empty). Used
    after the daily instrument sync, when contracts roll. Returns one shard
    per connection id (0..connections-1) and the keys that fit nowhere.
    """
    wanted: dict[str, Mode] = {}
    for mode in ("full_d30", "full", "option_greeks", "ltpc"):
        for key in universe.get(mode, ()):
            wanted.setdefault(key, mode)
    by_id = {s.shard_id: s for s in current}
    shards = [Shard(i, {}) for i in range(connections)]
    counts: list[dict[Mode, int]] = [dict.fromkeys(MODES, 0) for _ in range(connections)]
    placed: set[str] = set()
    for i, shard in enumerate(shards):
        old = by_id.get(i)
        if old is None:
            continue
        for mode, keys in old.keys.items():
            for key in keys:
                if wanted.get(key) == mode and key not in placed:
                    shard.keys.setdefault(mode, []).append(key)
                    counts[i][mode] += 1
                    placed.add(key)
        for mode, keys in old.keys.items():
            for key in keys:
                new_mode = wanted.get(key)
                if new_mode is None or new_mode == mode or key in placed:
                    continue
                if room(limits, counts[i], new_mode) > 0:
                    shard.keys.setdefault(new_mode, []).append(key)
                    counts[i][new_mode] += 1
                    placed.add(key)
    rejected: dict[Mode, list[str]] = {}
    for mode in MODES:
        todo = sorted(k for k, m in wanted.items() if m == mode and k not in placed)
        for i in sorted(range(connections), key=lambda j: (sum(counts[j].values()), j)):
            n = min(room(limits, counts[i], mode), len(todo))
            if n:
                shards[i].keys.setdefault(mode, []).extend(todo[:n])
                counts[i][mode] += n
                todo = todo[n:]
        if todo:
            rejected[mode] = todo
    return shards, rejected
