"""The README's run command brings up the whole topology without Docker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import asyncpg

from tests.support.db import Server, connection
from tests.support.paths import ROOT
from tests.support.ports import free_port


async def counts(dsn: str) -> tuple[int, int, int]:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return 0, 0, 0
    try:
        if not await conn.fetchval("SELECT to_regclass('candles_1m') IS NOT NULL"):
            return 0, 0, 0
        ticks = await conn.fetchval("SELECT count(*) FROM ticks")
        candles = await conn.fetchval("SELECT count(*) FROM candles_1m")
        fresh = await conn.fetchval(
            "SELECT count(*) FROM candles_1m WHERE bucket >= now() - interval '2 minutes'"
        )
        return ticks, candles, fresh
    finally:
        await conn.close()


def prometheus_up(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="collector"}'})
    try:
        result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    except OSError:
        return False
    return bool(result) and result[0]["value"][1] == "1"


def test_local_stack_streams_into_timescaledb_and_prometheus(tsdb: Server, tmp_path: Path) -> None:
    import asyncio

    db = "t_stack_" + uuid.uuid4().hex[:8]
    prom_port = free_port()
    env = {
        **os.environ,
        "LOCAL_STACK_DB": db,
        "SIMULATOR_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(prom_port),
        "COLLECTOR_METRICS_PORT": str(free_port()),
        "COLLECTOR_CANDLE_REFRESH_INTERVAL_S": "2",
        "COLLECTOR_JOURNAL_DIR": str(tmp_path / "journal"),
        "LOCAL_STACK_FLAVOUR": tsdb.flavour,
    }
    for key in ("COLLECTOR_UPSTOX_TOKEN", "COLLECTOR_UPSTOX_TOKEN_FILE", "COLLECTOR_DATABASE_URL"):
        env.pop(key, None)
    log = (tmp_path / "stack.log").open("wb")
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "local-stack")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    dsn = tsdb.database(db)
    try:
        deadline = time.monotonic() + 180
        ticks = candles = fresh = 0
        up = False
        while not (ticks > 2000 and fresh > 0 and up):
            assert proc.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                (ticks, candles, fresh, up),
                (tmp_path / "stack.log").read_text()[-3000:],
            )
            time.sleep(1)
            ticks, candles, fresh = asyncio.run(counts(dsn))
            up = up or prometheus_up(prom_port)
        # Candles keep filling as ticks arrive.
        time.sleep(5)
        later = asyncio.run(counts(dsn))
        assert later[0] > ticks and later[1] >= candles
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

        async def drop() -> None:
            async with connection(tsdb.dsn) as conn:
                await conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

        asyncio.run(drop())
