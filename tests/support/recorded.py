"""A recording made the way users make one, and ``collector replay`` as a process, for the replay tests.

:func:`record` streams the simulator into a database through ``collector run``
(two connections, every mode, reconnects and market status changes on the
way) and returns the span it covers. :class:`ReplayProcess` runs
``python -m collector replay`` against a database and reads its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from collector.core.span import day_bounds
from collector.simulator.server import Simulator
from tests.support.db import connection
from tests.support.metrics import Samples, scrape, total
from tests.support.ports import free_port
from tests.support.process import CollectorProcess, collector_env

__all__ = ["Recorded", "ReplayProcess", "record", "refresh_candles", "synthetic", "universe_of"]


@dataclass(frozen=True)
class Recorded:
    """A database holding a recording, the span it covers, and the universe it subscribed."""

    dsn: str
    start: datetime
    end: datetime
    universe: dict[str, list[str]]


def universe_of(sim: Simulator) -> dict[str, list[str]]:
    """Every mode, and both payloads of full mode (market and index)."""
    keys = sim.market.instruments
    fo = sorted(k for k, i in keys.items() if k.startswith("NSE_FO") and not i.is_option)
    options = sorted(k for k, i in keys.items() if i.is_option)
    eq = sorted(k for k in keys if k.startswith("NSE_EQ"))
    indices = sorted(k for k in keys if k.startswith("NSE_INDEX"))
    return {
        "full": fo[:12] + indices[:2],
        "full_d30": fo[12:14],
        "option_greeks": options[:6],
        "ltpc": eq[:10] + indices[2:],
    }


async def span_of(dsn: str) -> tuple[datetime, datetime]:
    """The first and last receive time in the database, the end just after the last."""
    async with connection(dsn) as conn:
        first, last = await conn.fetchrow(
            "SELECT min(t), max(t) FROM (SELECT received_at AS t FROM ticks UNION ALL "
            "SELECT received_at FROM market_status UNION ALL SELECT updated_at FROM exchange_bars) s"
        )
    return first, last + timedelta(milliseconds=1)


async def record(
    dsn: str,
    workdir: Path,
    seconds: float,
    *,
    rate: float = 400,
    script: Callable[[Simulator, float], Awaitable[None]] | None = None,
) -> Recorded:
    """Stream ``seconds`` of the simulator into ``dsn`` with ``collector run``; ``script(sim, t)``
    runs once a second with the seconds since the start, to drop sockets and move the market."""
    async with Simulator(rate=rate, stocks=20, seed=11) as sim:
        universe = universe_of(sim)
        env = collector_env(sim, dsn, universe=universe, COLLECTOR_CONNECTIONS="2")
        with CollectorProcess(workdir, env) as collector:
            await collector.until_rows(200)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                if script is not None:
                    await script(sim, elapsed)
                await asyncio.sleep(1.0)
            await collector.settle(sim)
            rc, _ = await collector.stop()
            assert rc == 0, collector.tail()
    start, end = await span_of(dsn)
    return Recorded(dsn, start, end, universe)


class ReplayProcess:
    """One ``collector replay``; its output goes to ``workdir/replay.log``."""

    def __init__(self, workdir: Path, dsn: str, *args: str, token: str = "replay-token") -> None:
        self.workdir = workdir
        self.log = workdir / "replay.log"
        self.port = free_port()
        self.metrics_port = free_port()
        self.token = token
        self.args = [
            "--port", str(self.port), "--metrics-port", str(self.metrics_port), "--token", token, *args,
        ]  # fmt: skip
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
            "COLLECTOR_DATABASE_URL": dsn,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReplayProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "replay", *self.args], cwd=self.workdir, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Samples:
        """The replay's ``/metrics``; {} while nothing listens."""
        return scrape(self.metrics_url)

    def metrics_text(self) -> str:
        """The replay's ``/metrics`` as served, for promtool."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    async def until(self, metric: str, timeout_s: float = 120) -> Samples:
        """Wait until ``metric`` is above 0 (e.g. ``collector_replay_finished``); returns the scrape."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"replay exited:\n{self.tail()}"
            samples = await asyncio.to_thread(self.scrape)
            if total(samples, metric) > 0:
                return samples
            assert time.monotonic() < deadline, f"timed out waiting for {metric}\n{self.tail()}"
            await asyncio.sleep(0.2)

    async def listening(self, timeout_s: float = 60) -> Samples:
        """Until the replay serves: its ``/metrics`` answers with the span, after the feed port listens."""
        return await self.until("collector_replay_span_end_timestamp_seconds", timeout_s)

    async def stop(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"replay did not stop within {timeout_s}s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> ReplayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


SYNTHETIC_SQL = """
INSERT INTO ticks
SELECT t, 'NSE_FO|' || (40000 + g % $4), k, g % 997 = 0, ft, ft + interval '2.5 ms', ltp,
       CASE WHEN k = 'index' THEN 0 ELSE 25 * (1 + g % 7) END, ltp * 0.99,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 25 * (1 + g % 7) END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 1000 + g END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 5000.0 + g % 50 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 0.15 END,
       CASE WHEN k IN ('full', 'full_d30') THEN ltp - 0.5 END,
       CASE WHEN k IN ('full', 'full_d30') THEN 4000.0 END, CASE WHEN k IN ('full', 'full_d30') THEN 3800.0 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE ltp - 0.05 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 75 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE ltp + 0.05 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 50 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 0.5 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE -4.2 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 0.0012 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 11.5 END,
       CASE WHEN k IN ('ltpc', 'index') THEN NULL ELSE 2.1 END,
       CASE WHEN g % 11 = 0 THEN ltp END,
       CASE k WHEN 'full' THEN ARRAY[ltp - 0.05, ltp - 0.1, ltp - 0.15, ltp - 0.2, ltp - 0.25]
              WHEN 'full_d30' THEN array_fill(ltp - 0.05, ARRAY[30]) END,
       CASE k WHEN 'full' THEN ARRAY[75, 150, 225, 300, 375]::int8[] WHEN 'full_d30' THEN array_fill(75::int8, ARRAY[30]) END,
       CASE k WHEN 'full' THEN ARRAY[ltp + 0.05, ltp + 0.1, ltp + 0.15, ltp + 0.2, ltp + 0.25]
              WHEN 'full_d30' THEN array_fill(ltp + 0.05, ARRAY[30]) END,
       CASE k WHEN 'full' THEN ARRAY[50, 100, 150, 200, 250]::int8[] WHEN 'full_d30' THEN array_fill(50::int8, ARRAY[30]) END
FROM (
    SELECT g, $1::timestamptz + g * $2::interval AS t, $1::timestamptz + (g / 20) * 20 * $2::interval AS ft,
           (ARRAY['full', 'ltpc', 'option_greeks', 'full_d30', 'index'])[1 + (g % $4) % 5] AS k,
           round((100 + (g % 1000) * 0.05)::numeric, 2)::float8 AS ltp
    FROM generate_series(0, $3 - 1) g
) s
"""


async def synthetic(dsn: str, first_day: date, n_days: int, ticks_per_day: int, keys: int = 200) -> None:
    """Ticks of every kind spread over each day's 09:15-15:30 IST, 20 to a frame, and a few rows of the other tables."""
    async with connection(dsn) as conn:
        for i in range(n_days):
            day_start, _ = day_bounds(first_day + timedelta(days=i))
            open_at = day_start + timedelta(hours=9, minutes=15)
            step = timedelta(hours=6, minutes=15) / ticks_per_day
            await conn.execute(SYNTHETIC_SQL, open_at, step, ticks_per_day, keys)
            await conn.execute(
                "INSERT INTO exchange_bars SELECT 'NSE_FO|' || (40000 + k), 'I1', $1::timestamptz + m * interval "
                "'1 minute', 100, 101, 99, 100.5, 1000 * m, $1::timestamptz + m * interval '1 minute' + "
                "interval '59 s' FROM generate_series(0, 9) k, generate_series(0, 59) m",
                open_at,
            )
            await conn.execute(
                "INSERT INTO market_status VALUES ('NSE_FO', 'normal', 'NORMAL_OPEN', $1, $1), "
                "('NSE_FO', 'normal', 'NORMAL_CLOSE', $2, $2)",
                open_at, open_at + timedelta(hours=6, minutes=15),
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason, instruments) "
                "VALUES (0, $1, $2, '{NSE_FO}', 'reconnect', '{NSE_FO|40000,NSE_FO|40001}')",
                open_at + timedelta(hours=1), open_at + timedelta(hours=1, seconds=3),
            )  # fmt: skip


async def refresh_candles(dsn: str) -> None:
    """Bring the candles up to date with the ticks: a no-op where they are continuous aggregates,
    a refresh of every level where they are tables the collector refreshes (the Apache build)."""
    async with connection(dsn) as conn:
        await conn.execute("SELECT refresh_candles('-infinity')")
