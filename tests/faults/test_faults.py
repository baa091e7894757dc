"""Faults injected into a running collector at realistic rates, every tick counted.

The collector runs as users run it (``collector run``) against the simulator
at 5 000 ticks/s; each test injects one fault, lets the collector recover,
then counts every tick per instrument against what the simulator sent: lost
and duplicated. The figures are printed at the end of the run ("figures
measured by the fault tests") and summarised in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.simulator.server import Simulator
from tests.support.db import Server, connection, query
from tests.support.process import (
    CollectorProcess,
    collector_env,
    counts_by_instrument,
    expect_exactly_once,
    sim_universe,
)

RATE = 5000.0
Figures = Callable[[str], None]


def env_for(sim: Simulator, dsn: str, **extra: str) -> dict[str, str]:
    return collector_env(sim, dsn, universe=sim_universe(sim, full=40, ltpc=20), **extra)


async def kill_writers(tsdb: Server, dsn: str) -> int:
    rows = await query(
        tsdb.dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
        "AND application_name LIKE 'collector writer%'",
        dsn.rsplit("/", 1)[1],
    )
    return len(rows)


@dataclass
class Streaming:
    """A collector streaming from the simulator, and what was sent since it warmed up."""

    sim: Simulator
    c: CollectorProcess
    sent0: int
    t0: float

    def measured(self) -> tuple[float, int]:
        """Seconds since the warm-up, and ticks the simulator sent in them."""
        return time.monotonic() - self.t0, self.sim.stats()["ticks_sent"] - self.sent0


@contextlib.asynccontextmanager
async def streaming(dsn: str, workdir: Path, **env: str) -> AsyncIterator[Streaming]:
    """The collector at RATE, past its first 2 000 rows; settled and stopped cleanly at the end."""
    async with Simulator(rate=RATE, stocks=20) as sim:
        with CollectorProcess(workdir, env_for(sim, dsn, **env)) as c:
            await c.until_rows()
            yield Streaming(sim, c, sim.stats()["ticks_sent"], time.monotonic())
            await c.settle(sim)
            rc, _ = await c.stop()
        assert rc == 0, c.tail()


async def report(dsn: str, sim: Simulator, figures: Figures, what: str, seconds: float, sent: int) -> None:
    totals = await expect_exactly_once(dsn, sim.stats()["instruments"])
    figures(
        f"{what}: {seconds:.0f} s at {sent / seconds:,.0f} ticks/s; {totals['sent']:,} ticks sent, "
        f"{totals['stored']:,} stored: lost 0, duplicated 0"
    )


# -- the database ------------------------------------------------------------------------


async def test_database_stopped_for_a_minute(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    async with streaming(migrated, tmp_path) as s:
        await asyncio.to_thread(tsdb.stop)
        try:
            await asyncio.sleep(60)
            assert s.c.metric("collector_database_up") == 0
            assert s.c.metric("collector_journal_lag_bytes") > 0  # the journal holds the minute
        finally:
            await asyncio.to_thread(tsdb.start)
        seconds, sent = s.measured()
        await s.c.wait_for(lambda: s.c.metric("collector_database_up") == 1, 90, "the database back")
    await report(migrated, s.sim, figures, f"[{tsdb.flavour}] database stopped", seconds, sent)


async def test_the_writers_sessions_killed_again_and_again(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    async with streaming(migrated, tmp_path) as s:
        # Twelve kills, each of a session the writers made again after the last one: a writer
        # in its reconnect backoff has no session to kill, so count kills, not attempts.
        killed, deadline = 0, time.monotonic() + 60
        while killed < 12:
            assert time.monotonic() < deadline, f"the writers came back for only {killed} kills in 60 s"
            killed += await kill_writers(tsdb, migrated)
            await asyncio.sleep(1.5)
        seconds, sent = s.measured()
        assert s.c.metric("collector_write_failures_total", kind="transient") >= 6
    await report(migrated, s.sim, figures, f"[{tsdb.flavour}] {killed} writer sessions killed", seconds, sent)


async def test_a_statement_timeout_hit_mid_copy(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    name = migrated.rsplit("/", 1)[1]
    async with streaming(migrated, tmp_path) as s:
        failures0 = s.c.metric("collector_write_failures_total", kind="transient")
        await query(tsdb.dsn, f"ALTER DATABASE {name} SET statement_timeout = '2ms'")
        try:
            await kill_writers(tsdb, migrated)  # new sessions get the timeout
            await asyncio.sleep(15)
            assert s.c.metric("collector_write_failures_total", kind="transient") > failures0 + 3
        finally:
            await query(tsdb.dsn, f"ALTER DATABASE {name} RESET statement_timeout")
            await kill_writers(tsdb, migrated)
        seconds, sent = s.measured()
    await report(migrated, s.sim, figures, f"[{tsdb.flavour}] 2 ms statement timeout", seconds, sent)


async def test_the_server_restarted_while_copies_are_in_flight(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    async with streaming(migrated, tmp_path) as s:
        for _ in range(3):  # at 5 000 ticks/s a COPY is nearly always in flight
            await asyncio.to_thread(tsdb.stop)
            await asyncio.to_thread(tsdb.start)
            await s.c.wait_for(lambda: s.c.metric("collector_database_up") == 1, 60, "writing again")
            await asyncio.sleep(2)
        seconds, sent = s.measured()
    await report(migrated, s.sim, figures, f"[{tsdb.flavour}] server restarted 3 times", seconds, sent)


async def test_a_table_lock_held_for_thirty_seconds(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    async with streaming(migrated, tmp_path) as s:
        async with connection(migrated) as blocker:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE ticks IN EXCLUSIVE MODE")  # writes wait, reads go on
                rows = s.c.metric("collector_rows_written_total", table="ticks")
                await asyncio.sleep(30)
                assert s.c.metric("collector_rows_written_total", table="ticks") == rows
        seconds, sent = s.measured()
        await s.c.settle(s.sim)
        # The oldest row waited the whole lock: the receive → commit histogram shows it.
        assert s.c.metric("collector_receive_to_commit_seconds_bucket", le="30.0") < s.c.metric(
            "collector_receive_to_commit_seconds_count"
        )
    await report(migrated, s.sim, figures, f"[{tsdb.flavour}] ticks locked", seconds, sent)


# -- the disk ----------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs for the journal: a disk that fills up."""
    mount = tmp_path / "journal"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def stored_consistently(dsn: str, sim: Simulator) -> tuple[int, int]:
    """No tick twice, none the simulator did not send; returns (stored, sent)."""
    got = await counts_by_instrument(dsn)
    sent = sim.stats()["instruments"]
    for key, (n, d) in got.items():
        assert n == d, f"{key}: {n - d} duplicates"
        assert d <= sent[key]["sent"], key
    return sum(n for n, _ in got.values()), sum(s["sent"] for s in sent.values())


async def gaps_with(dsn: str, reason: str) -> int:
    async with connection(dsn) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM feed_gaps WHERE reason = $1", reason))


async def test_a_full_journal_disk_stops_reading_then_resumes(
    tsdb: Server, migrated: str, tmp_path: Path, tmpfs: Path, figures: Figures
) -> None:
    journal = {"COLLECTOR_JOURNAL_DIR": str(tmpfs), "COLLECTOR_JOURNAL_SEGMENT_BYTES": str(1024 * 1024)}
    async with streaming(migrated, tmp_path, **journal) as s:
        c = s.c
        await asyncio.to_thread(tsdb.stop)  # nothing is committed, so nothing is freed
        t0 = time.monotonic()
        try:
            await c.wait_for(lambda: c.metric("collector_journal_full") >= 1, 60, "the disk full")
            filled = time.monotonic() - t0
            assert c.metric("collector_journal_write_errors_total") >= 1
            assert c.metric("collector_feed_connected") < 2  # a connection stopped reading
            await asyncio.sleep(5)
        finally:
            await asyncio.to_thread(tsdb.start)
        stopped = time.monotonic() - t0 - filled
        # The writers commit and delete segments; the disk has room; reading resumes.
        await c.wait_for(lambda: c.metric("collector_journal_full") == 0, 90, "room again")
        await c.wait_for(lambda: c.metric("collector_feed_connected") == 2, 60, "reading again")
        await c.settle(s.sim)
        assert c.metric("collector_journal_corrupt_records_total") == 0  # no torn record left behind
    stored, sent = await stored_consistently(migrated, s.sim)
    assert await gaps_with(migrated, "journal") >= 1
    figures(
        f"[{tsdb.flavour}] 24 MiB journal disk full after {filled:.0f} s at {RATE:,.0f} ticks/s, reading stopped "
        f"~{stopped:.0f} s: {sent - stored:,} ticks sent meanwhile were not read (recorded as gaps; "
        f"{sent:,} sent in the test), duplicated 0, corrupt 0"
    )


def immutable(folder: Path, on: bool) -> None:
    """chattr +i on the journal folders and their files: every write fails, open descriptors
    included, even for root, as on a filesystem the kernel turned read-only. (The doorbell, a
    FIFO, takes no flags: its rings are not data, and go on.)"""
    paths = [
        p for d in folder.iterdir() if d.is_dir() for p in (d, *d.iterdir()) if p.is_dir() or p.is_file()
    ]
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)


async def test_a_read_only_journal_stops_reading_then_resumes(
    tsdb: Server, migrated: str, tmp_path: Path, figures: Figures
) -> None:
    async with streaming(migrated, tmp_path) as s:
        c, journal = s.c, tmp_path / "journal"
        await asyncio.to_thread(immutable, journal, True)
        t0 = time.monotonic()
        try:
            await c.wait_for(lambda: c.metric("collector_journal_full") == 2, 30, "both stopped reading")
            assert c.metric("collector_journal_write_errors_total") >= 2
            await asyncio.sleep(5)
        finally:
            await asyncio.to_thread(immutable, journal, False)
        stopped = time.monotonic() - t0
        await c.wait_for(lambda: c.metric("collector_feed_connected") == 2, 60, "reading again")
        await c.settle(s.sim)
        assert c.metric("collector_journal_corrupt_records_total") == 0
    stored, sent = await stored_consistently(migrated, s.sim)
    assert await gaps_with(migrated, "journal") >= 2
    figures(
        f"[{tsdb.flavour}] journal read-only for {stopped:.0f} s at {RATE:,.0f} ticks/s: "
        f"{sent - stored:,} ticks sent meanwhile were not read (recorded as gaps; {sent:,} sent in the test), "
        "duplicated 0, corrupt 0"
    )


# -- the process -------------------------------------------------------------------------

STATES = ["streaming", "database-away", "replaying", "mid-copy"]


@contextlib.asynccontextmanager
async def state(name: str, tsdb: Server, dsn: str, c: CollectorProcess) -> Any:
    """Put a running collector into one of STATES for the duration of the block."""
    if name == "streaming":
        yield
    elif name == "database-away":
        await asyncio.to_thread(tsdb.stop)
        await asyncio.sleep(3)
        try:
            yield
        finally:
            await asyncio.to_thread(tsdb.start)
    elif name == "replaying":
        await asyncio.to_thread(tsdb.stop)
        await asyncio.sleep(8)  # a backlog in the journal ...
        await asyncio.to_thread(tsdb.start)
        # ... which the writers are committing now
        await c.wait_for(lambda: c.metric("collector_database_up") == 1, 60, "writing again")
        assert c.metric("collector_journal_lag_bytes") > 0
        yield
    elif name == "mid-copy":
        async with connection(dsn) as blocker:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE ticks IN EXCLUSIVE MODE")
                await asyncio.sleep(2)  # every writer is now waiting inside its COPY
                yield


@pytest.mark.parametrize("where", STATES)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_signal_in_every_state_loses_nothing_read(
    single_tsdb: Server, single_migrated: str, tmp_path: Path, figures: Figures, where: str, how: str
) -> None:
    timeout_s = 8
    async with Simulator(rate=RATE, stocks=20) as sim:
        env = env_for(sim, single_migrated, COLLECTOR_SHUTDOWN_TIMEOUT_S=str(timeout_s))
        first = CollectorProcess(tmp_path, env).start()
        try:
            await first.until_rows()
            async with state(where, single_tsdb, single_migrated, first):
                await first.settle(sim)  # so that "sent" is "read" at the moment of the signal
                if how == "SIGTERM":
                    rc, took = await first.stop(60)
                    assert rc == 0 and took <= timeout_s + 1, (rc, took, first.tail())
                else:
                    first.send(signal.SIGKILL)
                    await asyncio.to_thread(first.proc.wait, 30)  # type: ignore[union-attr]
                    took = 0.0
        finally:
            first.kill()
        await asyncio.sleep(0.5)
        assert not first.children()  # nothing is left writing the journals
        sim.rate = RATE
        with CollectorProcess(tmp_path, env) as second:
            await second.wait_for(
                lambda: second.metric("collector_feed_connected") == 2, 60, "streaming again"
            )
            await asyncio.sleep(1)
            await second.settle(sim)
            rc, _ = await second.stop()
            assert rc == 0, second.tail()
        totals = await expect_exactly_once(single_migrated, sim.stats()["instruments"])
        assert await gaps_with(single_migrated, "collector_down") == 2  # one per connection
    figures(
        f"{how} while {where}: stopped in {took:.1f} s (limit {timeout_s} s); {totals['sent']:,} ticks sent, "
        f"{totals['stored']:,} stored once: lost 0, duplicated 0"
    )
