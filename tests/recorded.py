"""A recording made the way users make one, and ``collector replay`` as a process, for the replay tests.

:func:`record` streams the simulator into a database through ``collector run``
(two connections, every mode, reconnects and market status changes on the
way) and returns the span it covers. :class:`ReplayProcess` runs
``python -m collector replay`` against a database and reads its status.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from collector.simulator.server import Simulator
from tests.process import CollectorProcess, collector_env
from tests.stack import free_port

__all__ = ["Recorded", "ReplayProcess", "record", "universe_of"]


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
    conn = await asyncpg.connect(dsn)
    try:
        first, last = await conn.fetchrow(
            "SELECT min(t), max(t) FROM (SELECT received_at AS t FROM ticks UNION ALL "
            "SELECT received_at FROM market_status UNION ALL SELECT updated_at FROM exchange_bars) s"
        )
    finally:
        await conn.close()
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
        self.token = token
        self.args = [
            "--port", str(self.port), "--metrics-port", "0", "--token", token, *args,
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

    def status(self) -> dict[str, Any]:
        """``GET /replay/status``; {} while nothing listens."""
        try:
            with urllib.request.urlopen(self.url + "/replay/status", timeout=5) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except OSError:
            return {}

    async def until(self, what: str, timeout_s: float = 120) -> dict[str, Any]:
        """Wait until the status says ``what`` (e.g. "finished"); returns the status."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, f"replay exited:\n{self.tail()}"
            status = await asyncio.to_thread(self.status)
            if status.get(what):
                return status
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {status}\n{self.tail()}"
            await asyncio.sleep(0.2)

    async def listening(self, timeout_s: float = 60) -> None:
        await self.until("to", timeout_s)

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
