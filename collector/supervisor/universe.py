"""What each connection carries: the universe, resolved, sharded and kept current.

The rule: this module decides which instrument keys each connection
subscribes, and says so in metrics and logs; it never touches a process.
The supervisor hands it a ``carry`` coroutine that tells a connection's feed
its new keys (or starts one), and calls it only for connections whose keys
changed.

- **Resolve**: the explicit keys of ``COLLECTOR_SUBSCRIPTIONS`` and the
  filters of ``COLLECTOR_UNIVERSE`` against the instrument master in force
  (loaded first if none is stored); keys the master does not hold are left
  out, counted in ``collector_universe_unknown_keys`` and named in the log.
  Without any master the configured keys are subscribed unchecked.
- **Shard** within Upstox's per-connection limits at start-up
  (:func:`~collector.core.shards.shard_universe`): a universe of nothing
  refuses to start, saying why.
- **Keep current**: the daily instrument sync loads the new master,
  resolves again (contracts roll) and moves the connections to the new
  universe with little churn (:func:`~collector.core.shards.plan_universe`),
  without reconnecting them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from collector.core.calendar import SEGMENTS
from collector.core.records import MODES, Mode
from collector.core.shards import DEFAULT_LIMITS, Shard, plan_universe, segment_of, shard_universe
from collector.core.universe import UniverseFilter, resolve_universe
from collector.db.instruments import display, publish_master, sync_master
from collector.exceptions import ConfigError
from collector.metrics import SupervisorMetrics

__all__ = ["MASTER_RETRY_S", "Universe"]

# How often a collector started without an instrument master tries to load one again.
MASTER_RETRY_S = 300

logger = logging.getLogger(__name__)


class Universe:
    """The keys of every connection (``shards``), from the settings and the instrument master."""

    def __init__(
        self,
        *,
        subscriptions: Mapping[Mode, list[str]],
        filters: list[UniverseFilter],
        instruments_url: str,
        instruments_min_ratio: float,
        connections: int,
        metrics: SupervisorMetrics,
        carry: Callable[[Shard], Awaitable[None]],
    ) -> None:
        self._subscriptions = subscriptions
        self._filters = filters
        self._instruments_url = instruments_url
        self._min_ratio = instruments_min_ratio
        self._connections = connections
        self._metrics = metrics
        self._carry = carry
        self.shards: dict[int, Shard] = {}
        self.has_master = False  # whether a master was in force at the last resolution
        self._empty = "resolves to no instrument"  # why, once the universe is resolved

    def shard(self, connection: int) -> Shard:
        """The keys ``connection`` carries (none if it carries nothing)."""
        return self.shards.get(connection, Shard(connection, {}))

    async def resolve(self, conn: asyncpg.Connection) -> dict[Mode, list[str]]:
        """The keys to subscribe per mode, from the settings and the master in force."""
        rows: list[Any] = [dict(r) for r in await conn.fetch("SELECT * FROM instruments_current")]
        if self._filters and not rows:
            logger.info("no instrument master stored yet; loading %s", display(self._instruments_url))
            await sync_master(conn, self._instruments_url, min_ratio=self._min_ratio, metrics=self._metrics)
            rows = [dict(r) for r in await conn.fetch("SELECT * FROM instruments_current")]
        # The master in force, and whether a newer day is held back by the guard.
        await publish_master(conn, self._metrics, current_rows=len(rows))
        self._metrics.universe_unknown.set(0)
        self.has_master = bool(rows)
        if not rows:
            logger.warning("no instrument master: subscribing the configured keys unchecked")
            self._empty = (
                "the filters need an instrument master and none could be loaded "
                f"from {display(self._instruments_url)} (COLLECTOR_INSTRUMENTS_URL)"
            )
            return {m: sorted(set(k)) for m, k in self._subscriptions.items() if k}
        universe, unknown = resolve_universe(rows, explicit=self._subscriptions, filters=self._filters)
        self._metrics.universe_unknown.set(len(unknown))
        described = (
            [f"{len(unknown)} keys of COLLECTOR_SUBSCRIPTIONS not in it (e.g. {unknown[0]})"]
            if unknown
            else []
        )
        described += [f"filter {f.model_dump(exclude_defaults=True)} matches nothing" for f in self._filters
                      if not resolve_universe(rows, explicit={}, filters=[f])[0]]  # fmt: skip
        self._empty = f"resolves to no instrument of the master in force ({len(rows)} instruments): " + (
            "; ".join(described) or "nothing configured matches"
        )
        if not any(universe.values()):
            logger.error("universe: %s", self._empty)
        elif described:
            logger.warning("universe: %s", "; ".join(described))
        return universe

    def start(self, universe: dict[Mode, list[str]]) -> None:
        """Shard the first universe over the connections; refuse one of nothing.

        Unless it is nothing for want of a master: the instrument master could not be loaded (a
        network failure, a file refused), which the next try may cure. Then the collector runs with
        what it has, says so in one line, and its metrics fire CollectorInstrumentMasterRejected
        and CollectorUniverseEmpty until a master loads.
        """
        if not any(universe.values()):
            if self.has_master or not self._filters:
                # Running with nothing to subscribe would look healthy and record nothing.
                raise ConfigError("COLLECTOR_UNIVERSE", self._empty)
            logger.error(
                "universe: %s; nothing is subscribed until a master loads (tried again every %d minutes)",
                self._empty, MASTER_RETRY_S // 60,
            )  # fmt: skip
        shards, rejected = shard_universe(universe, self._connections, DEFAULT_LIMITS)
        self.shards = {shard.shard_id: shard for shard in shards}
        self._publish(universe, rejected)

    async def apply(self, universe: dict[Mode, list[str]]) -> dict[Mode, list[str]]:
        """Move the connections to a new universe without reconnecting them; the keys that fit none."""
        current = list(self.shards.values())
        shards, rejected = plan_universe(current, universe, self._connections, DEFAULT_LIMITS)
        for shard in shards:
            old = self.shards.get(shard.shard_id)
            if old is not None and old.keys == shard.keys:
                continue
            if not shard.size and old is None:
                continue
            self.shards[shard.shard_id] = shard
            await self._carry(shard)
        self._publish(universe, rejected)
        logger.info(
            "universe applied: %d keys, %d fit no connection",
            sum(len(v) for v in universe.values()), sum(len(v) for v in rejected.values()),
        )  # fmt: skip
        return rejected

    async def sync(self, conn: asyncpg.Connection) -> None:
        """The daily instrument sync: load the new master, then resolve and apply the universe again."""
        # A refused or held-back master is logged and counted; the one in force stays.
        await sync_master(conn, self._instruments_url, min_ratio=self._min_ratio, metrics=self._metrics)
        # Contracts roll: re-resolve the universe from the master in force and apply it.
        await self.apply(await self.resolve(conn))

    def _publish(self, universe: dict[Mode, list[str]], rejected: dict[Mode, list[str]]) -> None:
        m = self._metrics
        for mode in MODES:
            m.universe.labels(mode).set(len(universe.get(mode, [])))
            m.sub_rejected.labels(mode).set(len(rejected.get(mode, [])))
            m.limit.labels(mode, "alone").set(DEFAULT_LIMITS.alone[mode])
            m.limit.labels(mode, "mixed").set(DEFAULT_LIMITS.mixed[mode])
        for connection in range(self._connections):
            shard = self.shard(connection)
            per_segment = dict.fromkeys(SEGMENTS, 0)
            for keys in shard.keys.values():
                for key in keys:
                    per_segment[segment_of(key)] = per_segment.get(segment_of(key), 0) + 1
            for segment in SEGMENTS:
                m.segment_keys.labels(str(connection), segment).set(per_segment[segment])
            for mode in MODES:
                m.sub_requested.labels(str(connection), mode).set(len(shard.keys.get(mode, [])))
        if rejected:
            logger.error(
                "%d keys fit no connection within Upstox's limits and are not subscribed",
                sum(len(v) for v in rejected.values()),
            )
