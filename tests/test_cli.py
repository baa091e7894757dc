"""The command line as a new user meets it: real subprocesses, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.db import connection
from tests.support.paths import ROOT
from tests.support.ports import free_port, wait_port
from tests.support.process import run_cli


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COLLECTOR_CONNECTIONS", "9"),
        ("COLLECTOR_SUBSCRIPTIONS", '{"fastest": ["NSE_EQ|X"]}'),
        ("COLLECTOR_FLUSH_INTERVAL_S", "soon"),
        ("COLLECTOR_UNIVERSE", '[{"mode": "full", "segmnets": ["NSE_FO"]}]'),
        # Issue 10: each of these was accepted, or named no variable (tests/test_settings.py walks all).
        ("COLLECTOR_CONNECTIONS", "3"),
        ("COLLECTOR_UPSTOX_API_URL", "garbage"),
        ("COLLECTOR_PING_INTERVAL_S", "inf"),
        ("COLLECTOR_RETENTION_DAYS", "10000000000"),
        ("COLLECTOR_MARKET_HOURS", '{"NSE": {"open": "15:30", "close": "09:15"}}'),
        ("COLLECTOR_SUBSCRIPTIONS", '{"ltpc": ["RELIANCE"]}'),
        ("COLLECTOR_JOURNAL_DIR", "README.md"),
    ],
)
def test_a_bad_setting_exits_with_one_line_naming_it(name: str, value: str) -> None:
    result = run_cli("migrate", env={name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


def test_secrets_never_reach_the_output(migrated: str) -> None:
    result = run_cli(
        "migrate", env={"COLLECTOR_DATABASE_URL": migrated, "COLLECTOR_UPSTOX_TOKEN": "s3cr3t-t0ken"}
    )
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def test_instruments_sync_refuses_a_bad_master_before_connecting(tmp_path: Path) -> None:
    # Judged before the database is contacted: this URL has nothing behind it.
    (tmp_path / "master.json.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = run_cli(
        "instruments", "sync", "--source", str(tmp_path / "master.json.gz"),
        env={"COLLECTOR_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"collector: instrument master refused: {tmp_path}/master.json.gz: a broken gzip")


def test_simulate_then_migrate_sync_and_run_produce_ticks(migrated: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "--port", str(port), "--rate", "500"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    run = None
    try:
        wait_port(port)
        api = f"http://127.0.0.1:{port}"
        env = {
            "COLLECTOR_DATABASE_URL": migrated,
            "COLLECTOR_UPSTOX_API_URL": api,
            "COLLECTOR_UPSTOX_TOKEN": "sim-token",
            "COLLECTOR_INSTRUMENTS_URL": f"{api}/market-quote/instruments/exchange/complete.json.gz",
            "COLLECTOR_UNIVERSE": json.dumps(
                [
                    {
                        "mode": "full",
                        "segments": ["NSE_FO"],
                        "instrument_types": ["FUT"],
                        "exclude_underlyings": ["NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY"],
                        "nearest_expiries": 1,
                    },
                    {"mode": "ltpc", "segments": ["NSE_INDEX"]},
                ]
            ),
            "COLLECTOR_SPOOL_DIR": str(tmp_path / "spool"),
            "COLLECTOR_METRICS_PORT": str(metrics_port),
        }
        assert run_cli("migrate", env=env).stdout.strip() == "database is up to date"
        synced = run_cli("instruments", "sync", env=env)
        assert synced.returncode == 0 and synced.stdout.startswith("stored "), synced.stderr
        with (tmp_path / "run.log").open("w") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"], cwd=ROOT, env={**os.environ, **env}, stderr=log
            )
        wait_port(metrics_port)

        async def count() -> tuple[int, int, set[str]]:
            async with connection(migrated) as conn:
                n = await conn.fetchval("SELECT count(*) FROM ticks")
                fut = await conn.fetchval(
                    "SELECT count(DISTINCT t.instrument_key) FROM ticks t JOIN instruments_current i "
                    "USING (instrument_key) WHERE i.instrument_type = 'FUT'"
                )
                unders = await conn.fetch(
                    "SELECT DISTINCT i.underlying_symbol FROM ticks t JOIN instruments_current i "
                    "USING (instrument_key) WHERE i.instrument_type = 'FUT'"
                )
                return n, fut, {r[0] for r in unders}

        deadline = time.monotonic() + 60
        while (got := asyncio.run(count()))[0] < 1000:
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.5)
        _, futures, underlyings = got
        # One near-month future per F&O stock (50 in the simulator), no index underlyings.
        assert futures == 50 and not underlyings & {"NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY"}
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "collector_feed_connected" in body and "sim-token" not in body
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        for p in (run, sim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if sim.stdout is not None:
            sim.stdout.close()
