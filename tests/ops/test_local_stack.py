"""``scripts/local-stack`` as a user runs it: in a terminal, until Ctrl-C.

The script runs on a pseudo-terminal it has as its controlling terminal, and
the test types the terminal's interrupt character: the line discipline sends
SIGINT to the whole foreground process group, exactly as Ctrl-C in a real
terminal does (a signal sent to the script alone would not show issue 16's
double stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import termios
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.support.db import Server, connection, query
from tests.support.paths import ROOT
from tests.support.ports import free_port

SCRIPT = ROOT / "scripts" / "local-stack"


class Terminal:
    """A program on a pseudo-terminal of its own (``setsid -c``: its controlling terminal)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._master, slave = os.openpty()
        try:
            self.proc = subprocess.Popen(
                ["setsid", "-c", *argv], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT
            )
        finally:
            os.close(slave)
        self._out = bytearray()
        self._hang_up = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # The reader owns the terminal's master side and closes it: a close from another
        # thread would wait for a blocked read to return before the terminal hangs up.
        try:
            while not self._hang_up.is_set():
                if not select.select([self._master], [], [], 0.1)[0]:
                    continue
                try:
                    data = os.read(self._master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    return
                if not data:
                    return
                self._out.extend(data)
        finally:
            os.close(self._master)

    @property
    def screen(self) -> str:
        return self._out.decode(errors="replace")

    def interrupt(self) -> None:
        """Type the terminal's interrupt character (Ctrl-C unless someone changed it)."""
        os.write(self._master, termios.tcgetattr(self._master)[6][termios.VINTR])

    def wait(self, timeout_s: float) -> int:
        """The program's exit status, once it and everything holding the terminal ended (all is read)."""
        rc = self.proc.wait(timeout_s)
        self._reader.join(5)
        return rc

    def hang_up(self) -> None:
        """Close the terminal, as a closed SSH session does: the kernel sends SIGHUP to its session."""
        self._hang_up.set()
        self._reader.join(10)
        assert not self._reader.is_alive()

    def close(self) -> None:
        """End whatever still runs: the program and everything it started, wherever it went."""
        if self.proc.poll() is None:
            left = descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait(30)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + 15
                while any(alive(pid) for pid in left) and time.monotonic() < deadline:
                    time.sleep(0.2)
        self.hang_up()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children in sessions of their own included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running, or a zombie nobody reaped (``<defunct>``)."""
    return Path(f"/proc/{pid}").exists()


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


def stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") or "TSDB" in k},
        "LOCAL_STACK_VAR": str(tmp_path / "var"),
        "SIMULATOR_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "COLLECTOR_METRICS_PORT": str(free_port()),
        "COLLECTOR_CANDLE_REFRESH_INTERVAL_S": "2",
        **extra,
    }


def test_local_stack_streams_and_ctrl_c_drains_it(tsdb: Server, tmp_path: Path) -> None:
    db = "t_stack_" + uuid.uuid4().hex[:8]
    # A password in the URL (the local server trusts loopback, so any works): it must never be printed.
    password = "pw-" + uuid.uuid4().hex
    base = tsdb.database(db).replace("postgres@", f"postgres:{password}@", 1)
    env = stack_env(
        tmp_path, LOCAL_STACK_FLAVOUR=tsdb.flavour, LOCAL_STACK_DB=db, COLLECTOR_DATABASE_URL=base
    )
    prom_port = int(env["PROMETHEUS_PORT"])
    dsn = tsdb.database(db)
    started = time.time()
    term = Terminal([str(SCRIPT)], env)
    try:
        deadline = time.monotonic() + 180
        ticks = candles = fresh = 0
        up = False
        while not (ticks > 2000 and fresh > 0 and up):
            assert term.proc.poll() is None, term.screen[-3000:]
            assert time.monotonic() < deadline, ((ticks, candles, fresh, up), term.screen[-3000:])
            time.sleep(1)
            ticks, candles, fresh = asyncio.run(counts(dsn))
            up = up or prometheus_up(prom_port)
        # Candles keep filling as ticks arrive.
        time.sleep(5)
        later = asyncio.run(counts(dsn))
        assert later[0] > ticks and later[1] >= candles

        processes = descendants(term.proc.pid)
        assert len(processes) >= 7, processes  # simulator, Prometheus, collector, 2 feeds, 2 writers
        term.interrupt()
        rc = term.wait(60)
        screen = term.screen
        assert rc == 130, screen[-3000:]
        # One stop request reached the collector, and it drained: the run's sessions are stored.
        assert screen.count("signal received: stopping") == 1 and "exiting now" not in screen, screen[-3000:]
        assert "shutdown complete: everything read is committed" in screen, screen[-3000:]
        assert_sessions_stored(dsn, started)
        # Nothing left running, and no <defunct> child nobody reaps.
        time.sleep(0.5)
        assert not [pid for pid in processes if alive(pid)], screen[-3000:]
        # The database URL is announced without its password.
        assert password not in screen
        assert f"data in 127.0.0.1:{urllib.parse.urlsplit(dsn).port}/{db}" in screen
    finally:
        term.close()
        asyncio.run(drop(tsdb, db))


def test_a_closed_terminal_stops_local_stack_as_ctrl_c_does(single_tsdb: Server, tmp_path: Path) -> None:
    """A closed SSH session: the terminal hangs up and the kernel sends SIGHUP to its session."""
    db = "t_stack_" + uuid.uuid4().hex[:8]
    env = stack_env(tmp_path, LOCAL_STACK_FLAVOUR=single_tsdb.flavour, LOCAL_STACK_DB=db)
    metrics = f"http://127.0.0.1:{env['COLLECTOR_METRICS_PORT']}/metrics"
    started = time.time()
    term = Terminal([str(SCRIPT)], env)
    try:
        deadline = time.monotonic() + 180
        while feeds_connected(metrics) < 2:
            assert term.proc.poll() is None, term.screen[-3000:]
            assert time.monotonic() < deadline, term.screen[-3000:]
            time.sleep(0.5)
        processes = descendants(term.proc.pid)
        term.hang_up()
        assert term.wait(60) == 129, term.screen[-3000:]
        assert_sessions_stored(single_tsdb.database(db), started)
        time.sleep(0.5)
        assert not [pid for pid in processes if alive(pid)], term.screen[-3000:]
    finally:
        term.close()
        asyncio.run(drop(single_tsdb, db))


def feeds_connected(metrics_url: str) -> float:
    try:
        body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    except OSError:
        return 0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("collector_feed_connected{")
    )


def assert_sessions_stored(dsn: str, since: float) -> None:
    """The writers drained: each connection's session of this run, closed by the stop, is stored."""
    rows = asyncio.run(
        query(
            dsn,
            "SELECT connection, disconnected_at FROM feed_sessions WHERE connected_at >= to_timestamp($1)",
            since,
        )
    )
    assert sorted(r["connection"] for r in rows) == [0, 1], rows
    assert all(r["disconnected_at"] is not None for r in rows)


async def drop(server: Server, db: str) -> None:
    async with connection(server.dsn) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.mark.parametrize("name", ["PROMETHEUS_PORT", "COLLECTOR_METRICS_PORT", "SIMULATOR_PORT"])
def test_a_port_already_taken_is_one_clear_line(tmp_path: Path, name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        term = Terminal([str(SCRIPT)], stack_env(tmp_path, **{name: str(port)}))
        try:
            rc = term.wait(60)
        finally:
            term.close()
    assert rc == 2, term.screen
    assert term.screen.splitlines() == [
        f"local-stack: port {port} on 127.0.0.1 is taken: stop what listens there or set {name} to a free port"
    ]
    assert not (tmp_path / "var").exists()  # refused before starting anything
