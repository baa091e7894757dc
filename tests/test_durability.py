"""The database goes away; nothing accepted is lost or stored twice.

Both tests stop the real TimescaleDB server (the one the test command
started) while the simulator streams, and count every tick the simulator sent
by its per-instrument sequence (strictly increasing trade time).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from collector.app import run
from collector.settings import load_settings
from collector.simulator.server import Simulator
from collector.sink.spool import Spool
from tests.conftest import ROOT, Server
from tests.helpers import sample, until


def universe(sim: Simulator) -> dict[str, list[str]]:
    fo = sorted(k for k in sim.market.instruments if k.startswith("NSE_FO"))
    eq = sorted(k for k in sim.market.instruments if k.startswith("NSE_EQ"))
    return {"full": fo[:30], "ltpc": eq[:20]}


async def stored_ticks(dsn: str) -> dict[str, tuple[int, int]]:
    """instrument -> (live rows, distinct trade times)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT instrument_key, count(*) AS n, count(DISTINCT time) AS d FROM ticks "
            "WHERE NOT snapshot GROUP BY 1"
        )
    finally:
        await conn.close()
    return {r["instrument_key"]: (r["n"], r["d"]) for r in rows}


async def quiesce(sim: Simulator, settle_s: float = 1.5) -> None:
    """Stop sending and give frames in flight time to arrive."""
    sim.rate = 0
    await asyncio.sleep(settle_s)


def require_control(tsdb: Server) -> None:
    if not tsdb.controllable:
        pytest.fail("this test stops the database: run it against the server the test command starts")


async def test_database_stopped_for_tens_of_seconds_loses_nothing(
    tsdb: Server, migrated: str, tmp_path: Path
) -> None:
    require_control(tsdb)
    async with Simulator(rate=400, stocks=20) as sim:
        settings = load_settings(
            database_url=migrated,
            upstox_api_url=sim.url,
            upstox_token=sim.token,
            subscriptions=universe(sim),
            spool_dir=tmp_path / "spool",
            spill_after_s=2.0,
            flush_interval_s=0.2,
            candle_refresh_interval_s=2.0,
        )
        registry = CollectorRegistry()
        stop = asyncio.Event()
        app = asyncio.create_task(run(settings, stop=stop, registry=registry, serve_metrics=False))
        try:
            await until(
                lambda: sample(registry, "collector_rows_written_total", {"table": "ticks"}) > 500, 30
            )
            await asyncio.to_thread(tsdb.stop)
            try:
                sent_before = sim.stats()["ticks_sent"]
                await asyncio.sleep(20)  # streaming on while the database is away
                assert sim.stats()["ticks_sent"] > sent_before + 4000
                assert sample(registry, "collector_database_up") == 0
                assert sample(registry, "collector_spool_rows") > 0
            finally:
                await asyncio.to_thread(tsdb.start)
            await until(lambda: sample(registry, "collector_database_up") == 1, 60, "database back")
            await until(lambda: sample(registry, "collector_spool_rows") == 0, 60, "spool replayed")
            await quiesce(sim)
            stats = sim.stats()["instruments"]
            total = sum(v["sent"] for v in stats.values())
            await until(
                lambda: (
                    sample(registry, "collector_ticks_decoded_total", {"kind": "full"})
                    + sample(registry, "collector_ticks_decoded_total", {"kind": "ltpc"})
                    >= total
                ),
                30,
                "every tick decoded",
            )
        finally:
            stop.set()
            await asyncio.wait_for(app, 60)
        assert sample(registry, "collector_replayed_rows_total") > 0
    got = await stored_ticks(migrated)
    for key, s in stats.items():
        assert got.get(key) == (s["sent"], s["sent"]), key
    assert sum(n for n, _ in got.values()) == total


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "collector", "run"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def spooled(spool_dir: Path) -> list[tuple[str, object]]:
    spool = Spool(spool_dir, max_bytes=1 << 40)
    try:
        return [(t.instrument_key, t.time) for b in spool.iter_batches() for t in b.ticks]
    finally:
        spool.close()


async def test_sigkill_while_database_down_replays_spool_without_duplicates(
    tsdb: Server, migrated: str, tmp_path: Path
) -> None:
    require_control(tsdb)
    spool_dir = tmp_path / "spool"
    log = tmp_path / "collector.log"
    async with Simulator(rate=300, stocks=20) as sim:
        env = {
            "COLLECTOR_DATABASE_URL": migrated,
            "COLLECTOR_UPSTOX_API_URL": sim.url,
            "COLLECTOR_UPSTOX_TOKEN": sim.token,
            "COLLECTOR_SUBSCRIPTIONS": json.dumps(universe(sim)),
            "COLLECTOR_SPOOL_DIR": str(spool_dir),
            "COLLECTOR_SPILL_AFTER_S": "1",
            "COLLECTOR_FLUSH_INTERVAL_S": "0.2",
            "COLLECTOR_METRICS_PORT": "0",
        }
        first = spawn(env, log)
        try:
            conn = await asyncpg.connect(migrated)
            try:
                deadline = time.monotonic() + 60
                while await conn.fetchval("SELECT count(*) FROM ticks") < 300:
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    await asyncio.sleep(0.2)
            finally:
                await conn.close()
            await asyncio.to_thread(tsdb.stop)
            try:
                await asyncio.sleep(8)
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                in_spool = spooled(spool_dir)
                assert len(in_spool) > 1000, log.read_text()[-3000:]
            finally:
                await asyncio.to_thread(tsdb.start)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        await quiesce(sim, 0.2)
        second = spawn(env, log)
        try:
            deadline = time.monotonic() + 90
            while list(spool_dir.glob("*.spool")) and spooled(spool_dir):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, log.read_text()[-3000:]
    conn = await asyncpg.connect(migrated)
    try:
        dupes = await conn.fetch(
            "SELECT instrument_key, time, count(*) FROM ticks GROUP BY 1, 2 HAVING count(*) > 1"
        )
        keys = await conn.fetch("SELECT instrument_key, time FROM ticks WHERE NOT snapshot")
    finally:
        await conn.close()
    assert not dupes, dupes[:5]
    stored = {(r["instrument_key"], r["time"]) for r in keys}
    missing = [t for t in in_spool if t not in stored]
    assert not missing, missing[:5]
    assert "replay" in log.read_text() or "spool holds" in log.read_text()
