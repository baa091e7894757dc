"""What `collector run` refuses at start-up, and what it says while running with part of its universe.

A collector that can never record anything must not run "healthy": no token at
all, or a universe that resolves to no instrument, is a configuration error
(exit 2, one line naming the setting). Keys the master does not list are one
warning line and a metric (alert CollectorUniverseKeysUnknown); a token Upstox
refuses is one line per job, not a traceback and not a job failure.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.core.shards import Shard
from collector.core.universe import UniverseFilter
from collector.metrics import SupervisorMetrics
from collector.simulator.server import MASTER_PATH, Simulator
from collector.supervisor.universe import Universe
from tests.support.db import connection
from tests.support.metrics import sample
from tests.support.process import CollectorProcess, collector_env, sim_universe


def run_once(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        cwd=tmp_path, env={**base, "COLLECTOR_JOURNAL_DIR": str(tmp_path / "journal"),
                           "COLLECTOR_METRICS_PORT": "0", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_no_token_at_all_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_once({"COLLECTOR_SUBSCRIPTIONS": '{"ltpc": ["NSE_EQ|INE002A01018"]}'}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "COLLECTOR_UPSTOX_TOKEN" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("COLLECTOR_UNIVERSE", '[{"segments": ["NOPE"]}]', "{'segments': ['NOPE']} matches nothing"),
        ("COLLECTOR_SUBSCRIPTIONS", '{"ltpc": ["NSE_EQ|NOT-A-KEY"]}', "not in it (e.g. NSE_EQ|NOT-A-KEY)"),
    ],
)
async def test_a_universe_that_resolves_to_nothing_is_a_configuration_error(
    migrated: str, tmp_path: Path, setting: str, value: str, says: str
) -> None:
    async with Simulator() as sim:
        env = {
            "COLLECTOR_DATABASE_URL": migrated,
            "COLLECTOR_UPSTOX_API_URL": sim.url,
            "COLLECTOR_UPSTOX_TOKEN": sim.token,
            "COLLECTOR_INSTRUMENTS_URL": sim.url + MASTER_PATH,
            # The master is loaded at start when filters need it: give it one to load.
            "COLLECTOR_UNIVERSE": '[{"segments": ["NOPE"]}]',
            setting: value,
        }
        result = await asyncio.to_thread(run_once, env, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("collector: configuration error: COLLECTOR_UNIVERSE: resolves to no instrument")
    assert says in last, last
    assert "Traceback" not in result.stderr


async def test_keys_the_master_does_not_list_are_one_line_and_a_metric(migrated: str, tmp_path: Path) -> None:
    async with Simulator(rate=100) as sim:
        universe = sim_universe(sim, full=2, ltpc=2)
        universe["ltpc"] += ["NSE_EQ|NOT-A-KEY", "NSE_EQ|ALSO-NOT"]
        env = collector_env(
            sim, migrated, universe=universe,
            COLLECTOR_INSTRUMENTS_URL=sim.url + MASTER_PATH,
            # A filter, so that the master is loaded at start and the keys are checked against it.
            COLLECTOR_UNIVERSE=json.dumps([{"mode": "ltpc", "segments": ["NSE_INDEX"]}]),
        )  # fmt: skip
        with CollectorProcess(tmp_path, env) as c:
            await c.wait_for(lambda: c.metric("collector_feed_connected") >= 1, 60, "streaming")
            assert c.metric("collector_universe_unknown_keys") == 2
            warned = [line for line in c.tail().splitlines() if "not in it" in line]
            assert (len(warned) == 1 and "NSE_EQ|NOT-A-KEY" in warned[0]) or "NSE_EQ|ALSO-NOT" in warned[0]
            rc, _ = await c.stop()
            assert rc == 0


async def test_a_refused_token_is_one_line_per_job_and_no_job_failure(migrated: str, tmp_path: Path) -> None:
    async with Simulator(rate=100) as sim:
        env = collector_env(sim, migrated, COLLECTOR_UPSTOX_TOKEN="not-the-token")
        with CollectorProcess(tmp_path, env) as c:
            await c.wait_for(
                lambda: c.metric("collector_feed_connect_failures_total", reason="401") >= 1, 60, "refused"
            )
            await c.wait_for(lambda: "job holiday_sync skipped" in c.tail(), 60, "the holiday job")
            assert c.metric("collector_job_failures_total", task="holiday_sync") == 0
            assert "Traceback" not in c.tail()
            rc, _ = await c.stop()
            assert rc == 0


async def test_without_a_master_it_runs_and_subscribes_once_one_loads(migrated: str, tmp_path: Path) -> None:
    """A master that cannot be loaded at start (a network failure, a refused file) is not a
    configuration error: the next try may cure it. The universe starts empty, says so in its
    metrics, and the retry that loads a master moves the connections to it."""
    source = tmp_path / "master.json.gz"
    source.write_bytes(b"")  # refused: the file is empty
    carried: list[Shard] = []

    async def carry(shard: Shard) -> None:
        carried.append(shard)

    registry = CollectorRegistry()
    universe = Universe(
        subscriptions={}, filters=[UniverseFilter(mode="ltpc", segments=["NSE_INDEX"])],
        instruments_url=str(source), instruments_min_ratio=0.5, connections=2,
        metrics=SupervisorMetrics(registry), carry=carry,
    )  # fmt: skip
    async with Simulator() as sim, connection(migrated) as conn:
        universe.start(await universe.resolve(conn))  # no ConfigError
        assert not universe.has_master and universe.shards == {}
        assert sample(registry, "collector_universe_keys", {"mode": "ltpc"}) == 0
        source.write_bytes(gzip.compress(json.dumps(sim.master).encode()))
        await universe.sync(conn)  # what the retry runs
    indices = sorted(r["instrument_key"] for r in sim.master if r["segment"] == "NSE_INDEX")
    assert universe.has_master and indices
    assert sorted(k for shard in carried for k in shard.keys.get("ltpc", [])) == indices
    assert sample(registry, "collector_universe_keys", {"mode": "ltpc"}) == len(indices)
