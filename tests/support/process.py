"""The collector as users run it: ``python -m collector ...`` in its own process.

:func:`run_cli` runs one command to its end. :class:`CollectorProcess` starts
``collector run`` with ``COLLECTOR_*`` settings, reads its ``/metrics`` over
HTTP (the supervisor serves every child's metrics), signals it, and finds its
child processes. ``counts_by_instrument`` and ``expect_exactly_once`` compare
what TimescaleDB holds with what the simulator says it sent, instrument by
instrument.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.support.db import query
from tests.support.metrics import Samples, scrape, total
from tests.support.paths import ROOT
from tests.support.ports import free_port

__all__ = [
    "ALWAYS_OPEN",
    "CollectorProcess",
    "collector_env",
    "counts_by_instrument",
    "expect_exactly_once",
    "run_cli",
    "sim_universe",
]

# Market hours that make every minute of every day open: tests run at any hour.
ALWAYS_OPEN = '{"*": {"open": "00:00", "close": "24:00", "days": [0, 1, 2, 3, 4, 5, 6]}}'


def run_cli(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    """``python -m collector *args`` in the checkout, to its end (two minutes at most); output captured."""
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[call-overload]
    )


def sim_universe(sim: Any, full: int = 30, ltpc: int = 20) -> dict[str, list[str]]:
    """The first ``full`` futures in full mode and ``ltpc`` equities in ltpc mode of the simulator."""
    fo = sorted(k for k in sim.market.instruments if k.startswith("NSE_FO"))
    eq = sorted(k for k in sim.market.instruments if k.startswith("NSE_EQ"))
    return {"full": fo[:full], "ltpc": eq[:ltpc]}


def collector_env(
    sim: Any, dsn: str, *, universe: dict[str, list[str]] | None = None, **extra: str
) -> dict[str, str]:
    """Settings for a collector that streams ``universe`` from ``sim`` into ``dsn``."""
    return {
        "COLLECTOR_DATABASE_URL": dsn,
        "COLLECTOR_UPSTOX_API_URL": sim.url,
        "COLLECTOR_UPSTOX_TOKEN": sim.token,
        "COLLECTOR_SUBSCRIPTIONS": json.dumps(universe or sim_universe(sim)),
        "COLLECTOR_FLUSH_INTERVAL_S": "0.1",
        **extra,
    }


class CollectorProcess:
    """One ``collector run``; its log goes to ``workdir/collector.log``."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.log = workdir / "collector.log"
        self.metrics_port = int(env.get("COLLECTOR_METRICS_PORT") or free_port())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")},
            "COLLECTOR_METRICS_PORT": str(self.metrics_port),
            "COLLECTOR_JOURNAL_DIR": str(workdir / "journal"),
            "COLLECTOR_MARKET_HOURS": ALWAYS_OPEN,
            "COLLECTOR_BACKOFF_BASE_S": "0.05",
            "COLLECTOR_BACKOFF_CAP_S": "0.5",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProcess:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"], cwd=self.workdir, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    # -- metrics ----------------------------------------------------------------------

    def scrape(self) -> Samples:
        """Every sample of /metrics; {} while nothing listens."""
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def metric(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        return total(self.scrape(), name, **labels)

    async def settle(self, sim: Any, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Stop the simulator sending and wait until every frame it sent has been read.

        On a loaded machine a feed can be behind its socket by seconds, so a fixed
        pause is not enough to make "sent" equal "read". Settled means: nothing
        waits in the simulator's buffers or either side's kernel socket queues,
        and the collector's received bytes stayed the same for ``quiet_s``.
        """
        sim.rate = 0
        deadline = time.monotonic() + timeout_s
        last, since = -1.0, time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            assert time.monotonic() < deadline, f"the feed never went quiet:\n{self.tail()}"
            buffered = sum(c.ws.transport.get_write_buffer_size() for c in sim.clients if c.ws.transport)
            received = await asyncio.to_thread(self.metric, "collector_received_bytes_total")
            if buffered or _socket_queues(sim.port) or received != last:
                last, since = received, time.monotonic()
                continue
            if time.monotonic() - since >= quiet_s:
                return

    async def until_rows(self, rows: int = 2000, timeout_s: float = 60) -> None:
        """Wait until more than ``rows`` ticks are committed: the collector is streaming."""
        await self.wait_for(
            lambda: self.metric("collector_rows_written_total", table="ticks") > rows, timeout_s, "ticks"
        )

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(condition):
            assert self.proc is None or self.proc.poll() is None, (
                f"collector exited while waiting for {what}:\n{self.tail()}"
            )
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.tail()}"
            await asyncio.sleep(0.2)

    # -- processes --------------------------------------------------------------------

    def children(self) -> dict[str, int]:
        """{"feed 0": pid, "writer 0": pid, ...} of the running child processes."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != self.pid:
                continue
            args = [a.decode() for a in cmdline if a]
            if "-m" in args:
                module = args[args.index("-m") + 1]
                kind = {"collector.feed.process": "feed", "collector.writer.process": "writer"}.get(
                    module, module
                )
                found[f"{kind} {args[-1]}"] = int(entry.name)
        return found

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout_s: float = 60.0, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal it and wait; returns (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"collector did not stop within {timeout_s}s:\n{self.tail()}") from None
        return rc, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


async def counts_by_instrument(dsn: str) -> dict[str, tuple[int, int]]:
    """instrument -> (live rows, distinct trade times) in ``ticks``."""
    rows = await query(
        dsn,
        "SELECT instrument_key, count(*) AS n, count(DISTINCT time) AS d FROM ticks WHERE NOT snapshot GROUP BY 1",
    )
    return {r["instrument_key"]: (r["n"], r["d"]) for r in rows}


async def expect_exactly_once(
    dsn: str, sent: Mapping[str, Any], *, allow_missing: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Every tick the simulator sent is stored once: per instrument, rows == distinct times == sent.

    ``sent`` is the simulator's ``stats()["instruments"]``. Returns the totals.
    """
    got = await counts_by_instrument(dsn)
    problems = []
    for key, s in sent.items():
        n, d = got.get(key, (0, 0))
        if n != d:
            problems.append(f"{key}: {n - d} duplicates")
        if d != s["sent"]:
            problems.append(f"{key}: sent {s['sent']}, stored {d}")
    assert not problems, problems[:10]
    return {"sent": sum(s["sent"] for s in sent.values()), "stored": sum(n for n, _ in got.values())}


def _socket_queues(port: int) -> int:
    """Bytes queued in the kernel on loopback TCP sockets to or from ``port`` (/proc/net/tcp)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == port or int(remote.split(":")[1], 16) == port:
            tx, rx = (int(q, 16) for q in queues.split(":"))
            total += tx + rx
    return total
