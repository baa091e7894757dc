"""The alert truth table: every alert against the failure it names, and silence in normal operation.

A promtool unit test proves a rule's arithmetic; it cannot prove that the
collector exports the series the rule needs when the failure really happens.
Here a real Prometheus loads our rules and scrapes real collectors (``collector
run`` process trees streaming from the simulator into a real TimescaleDB); for
every alert the failure it names is produced for real and the alert must
become pending (or firing) within its expression's reach; the time it took is
recorded (printed at the end of the run, and kept in the docs' table). Over a
sequence of normal operations (a start, three clean restarts, a writer
reconnect, a database restart, a market close and reopen, a universe change
by the daily instrument sync) no alert may become even pending.

Scenarios run concurrently, each with its own collector, simulator and
database; those that stop the server run in a phase of their own. Alerts that
do not involve the database are checked on one flavour only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.core.times import IST
from collector.db.instruments import read_master, store_master
from collector.db.jobs import candles_mode
from collector.journal.files import segments
from collector.journal.format import HEADER, MAGIC
from collector.journal.progress import read_committed
from collector.simulator.server import MASTER_PATH, Simulator
from tests.support.db import FLAVOURS, Server, chosen_flavours, migrate_database, server_of
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.process import CollectorProcess, collector_env, sim_universe

# A real Prometheus, real collectors, real databases of both flavours.
pytestmark = [pytest.mark.database, pytest.mark.provisioned]
RULES = ROOT / "prometheus" / "rules" / "collector.yml"
Figures = Callable[[str], None]


# -- a real Prometheus ------------------------------------------------------------------


class Collector(CollectorProcess):
    """``collector run``, waited on without blocking the event loop: twenty scenarios and their
    simulators share it, and a condition scrapes /metrics over HTTP."""

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(condition):
            assert self.proc is None or self.proc.poll() is None, f"the collector exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.tail()}"
            await asyncio.sleep(0.5)


class Prometheus:
    """Debian's prometheus loading our rules, scraping the targets in a file it watches."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets: dict[int, str] = {}  # metrics port -> scenario
        self._sd = workdir / "targets.json"
        self.proc: subprocess.Popen[bytes] | None = None
        # Collectors start two at a time: twenty starting at once (three interpreters each) would
        # starve the simulators, which share this test's one event loop, past every timeout.
        self.starting = asyncio.Semaphore(2)

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is required (scripts/test installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: collector\n"
            f"    file_sd_configs: [{{files: ['{self._sd}'], refresh_interval: 1s}}]\n"
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
                return self
            except OSError:
                assert time.monotonic() < deadline, (self.workdir / "prometheus.log").read_text()[-2000:]
                time.sleep(0.2)

    def _write_targets(self) -> None:
        groups = [{"targets": [f"127.0.0.1:{p}"], "labels": {"scenario": s}} for p, s in self.targets.items()]
        tmp = self._sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self._sd)

    def scrape(self, port: int, scenario: str) -> None:
        self.targets[port] = scenario
        self._write_targets()

    def forget(self, port: int) -> None:
        self.targets.pop(port, None)
        self._write_targets()

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            body = json.load(urllib.request.urlopen(url, timeout=10))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    async def scraped(self, port: int, timeout_s: float = 60) -> None:
        """Wait until this Prometheus has scraped the collector on ``port`` successfully."""
        started = time.monotonic()
        while not await asyncio.to_thread(self.query, f'up{{instance="127.0.0.1:{port}"}} == 1'):
            assert time.monotonic() - started < timeout_s, f"127.0.0.1:{port} never scraped"
            await asyncio.sleep(0.5)

    async def active(self, alert: str, port: int, timeout_s: float, **labels: str) -> float:
        """Wait until ``alert`` is pending or firing for the collector on ``port``; seconds waited."""
        matchers = ",".join([f'alertname="{alert}"', f'instance="127.0.0.1:{port}"',
                             *(f'{k}="{v}"' for k, v in labels.items())])  # fmt: skip
        started = time.monotonic()
        while not await asyncio.to_thread(self.query, f"ALERTS{{{matchers}}}"):
            waited = time.monotonic() - started
            assert waited < timeout_s, f"{alert} not pending {waited:.0f} s after its failure ({labels})"
            await asyncio.sleep(1)
        return time.monotonic() - started

    async def inactive(self, alert: str, port: int, timeout_s: float) -> float:
        """Wait until ``alert`` is neither pending nor firing for the collector on ``port``."""
        started = time.monotonic()
        expr = f'ALERTS{{alertname="{alert}", instance="127.0.0.1:{port}"}}'
        while await asyncio.to_thread(self.query, expr):
            waited = time.monotonic() - started
            assert waited < timeout_s, f"{alert} still active {waited:.0f} s after the failure ended"
            await asyncio.sleep(1)
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


# -- the collectors under test ------------------------------------------------------------


@dataclass
class Row:
    """One line of the truth table."""

    alert: str
    failure: str
    flavour: str
    seconds: float


@dataclass
class Table:
    server: Server
    prom: Prometheus
    root: Path
    rows: list[Row] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def record(self, alert: str, failure: str, seconds: float) -> None:
        self.rows.append(Row(alert, failure, self.server.flavour, seconds))

    async def database(self) -> str:
        """A new migrated database on this flavour's server."""
        name = "t_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(self.server.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        self.databases.append(name)
        dsn = self.server.database(name)
        await migrate_database(dsn)
        return dsn

    @contextlib.asynccontextmanager
    async def collector(
        self, name: str, sim: Simulator, dsn: str, *, universe: dict[str, list[str]] | None = None, **env: str
    ) -> AsyncIterator[CollectorProcess]:
        """``collector run`` streaming from ``sim`` into ``dsn``, scraped by Prometheus as ``name``."""
        workdir = self.root / f"{self.server.flavour}-{name}"
        workdir.mkdir(parents=True)
        keys = small(sim) if universe is None else universe
        settings = {"COLLECTOR_CONNECTIONS": "1", "COLLECTOR_SUBSCRIPTIONS": json.dumps(keys), **env}
        c = Collector(workdir, collector_env(sim, dsn, **settings))
        try:
            async with self.prom.starting:
                c.start()
                self.prom.scrape(c.metrics_port, f"{self.server.flavour}-{name}")
                await c.wait_for(lambda: c.metric("collector_feed_connected") >= 1, 120, "subscribed")
            await self.prom.scraped(c.metrics_port)  # a fault before its first scrape would prove nothing
            yield c
        finally:
            self.prom.forget(c.metrics_port)
            if c.proc is not None and c.proc.poll() is None:
                with contextlib.suppress(Exception):
                    await c.stop(30)
            c.kill()

    async def drop_databases(self) -> None:
        conn = await asyncpg.connect(self.server.dsn)
        try:
            for name in self.databases:
                await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


def small(sim: Simulator) -> dict[str, list[str]]:
    return sim_universe(sim, full=4, ltpc=4)


async def metric(c: CollectorProcess, name: str, **labels: str) -> float:
    return await asyncio.to_thread(c.metric, name, **labels)


async def streaming(c: CollectorProcess) -> None:
    await c.wait_for(lambda: c.metric("collector_rows_written_total", table="ticks") > 50, 90, "streaming")


async def sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': 'test', 'exp': int(exp)})}.c2ln"


# -- the failures, one scenario each ---------------------------------------------------------
# Each produces the failure an alert names in a real process tree and waits for the alert.


async def collector_down(t: Table) -> None:
    async with Simulator(rate=200) as sim, t.collector("down", sim, await t.database()) as c:
        await streaming(c)
        c.send(signal.SIGKILL)  # its children die with it
        seconds = await t.prom.active("CollectorDown", c.metrics_port, 150)
        t.record("CollectorDown", "the collector killed (SIGKILL)", seconds)


async def collector_absent(t: Table) -> None:
    # absent() is about the whole Prometheus: one of its own, whose only target goes away.
    prom = Prometheus(t.root / f"{t.server.flavour}-absent-prometheus").start()
    try:
        async with Simulator(rate=100) as sim:
            async with t.collector("absent", sim, await t.database()) as c:
                prom.scrape(c.metrics_port, "absent")
                await streaming(c)
                deadline = time.monotonic() + 30
                while not prom.query('up{job="collector"} == 1'):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(1)
                prom.forget(c.metrics_port)
                started = time.monotonic()
                while not await asyncio.to_thread(prom.query, 'ALERTS{alertname="CollectorAbsent"}'):
                    assert time.monotonic() - started < 60, "CollectorAbsent not pending"
                    await asyncio.sleep(1)
                t.record("CollectorAbsent", "the scrape target removed", time.monotonic() - started)
    finally:
        prom.close()


async def feed_disconnected(t: Table) -> None:
    async with Simulator(rate=200) as sim, t.collector("feed-down", sim, await t.database()) as c:
        await streaming(c)
        sim.fail_authorize(401, count=1_000_000)  # a rejected token: it cannot come back
        await sim.drop(1006)
        seconds = await t.prom.active("CollectorFeedDisconnected", c.metrics_port, 150, connection="0")
        t.record(
            "CollectorFeedDisconnected", "the socket dropped, the token rejected (401), market open", seconds
        )


async def no_ticks(t: Table) -> None:
    async with Simulator(rate=200) as sim, t.collector("no-ticks", sim, await t.database()) as c:
        await streaming(c)
        sim.stall(pings=True)  # connected, answering pings, silent
        seconds = await t.prom.active("CollectorNoTicks", c.metrics_port, 420, connection="0")
        t.record("CollectorNoTicks", "the socket silent but answering pings, market open", seconds)


async def journal_full(t: Table) -> None:
    dsn = await t.database()
    async with Simulator(rate=5000, stocks=20) as sim:
        universe = sim_universe(sim, full=30, ltpc=0)
        async with t.collector("journal-full", sim, dsn, universe=universe,
                               COLLECTOR_JOURNAL_MAX_BYTES=str(16 * 1024 * 1024),
                               COLLECTOR_JOURNAL_SEGMENT_BYTES=str(1024 * 1024)) as c:  # fmt: skip
            await streaming(c)
            blocker = await asyncpg.connect(dsn)
            try:
                async with blocker.transaction():
                    await blocker.execute(
                        "LOCK TABLE ticks IN EXCLUSIVE MODE"
                    )  # nothing commits, nothing freed
                    seconds = await t.prom.active("CollectorJournalFull", c.metrics_port, 180, connection="0")
            finally:
                await blocker.close()
            t.record(
                "CollectorJournalFull",
                "the journal at COLLECTOR_JOURNAL_MAX_BYTES (commits blocked)",
                seconds,
            )


async def process_restarting(t: Table) -> None:
    async with Simulator(rate=200) as sim, t.collector("restarting", sim, await t.database()) as c:
        await streaming(c)
        for n in range(3):
            pid = c.children()["feed 0"]
            os.kill(pid, signal.SIGKILL)  # an OOM kill, say
            if n < 2:
                await c.wait_for(
                    lambda pid=pid: c.children().get("feed 0") not in (None, pid), 60, "a new feed"
                )
        seconds = await t.prom.active("CollectorProcessRestarting", c.metrics_port, 60, process="feed")
        t.record("CollectorProcessRestarting", "the feed process killed a third time in minutes", seconds)


async def dead_letters(t: Table) -> None:
    dsn = await t.database()
    async with Simulator(rate=200) as sim:
        universe = small(sim)
        refused = universe["ltpc"][0]
        await sql(dsn, f"""
            CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.instrument_key = '{refused}' THEN
                    RAISE EXCEPTION 'refused on purpose' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$""", "CREATE TRIGGER refuse_one BEFORE INSERT ON ticks FOR EACH ROW EXECUTE FUNCTION refuse_one()")  # fmt: skip
        async with t.collector("dead-letters", sim, dsn, universe=universe) as c:
            seconds = await t.prom.active("CollectorDeadLetters", c.metrics_port, 90)
            t.record("CollectorDeadLetters", "the database refuses one instrument's rows (class 22)", seconds)


async def subscriptions_rejected(t: Table) -> None:
    async with Simulator(rate=100) as sim:
        fo = sorted(k for k in sim.market.instruments if k.startswith("NSE_FO"))
        assert len(fo) > 50
        universe = {"full_d30": fo[:51]}  # 50 fit one connection
        async with t.collector("rejected", sim, await t.database(), universe=universe) as c:
            seconds = await t.prom.active("CollectorSubscriptionsRejected", c.metrics_port, 90)
            t.record(
                "CollectorSubscriptionsRejected", "51 full_d30 keys for one connection (limit 50)", seconds
            )


async def token_expiring(t: Table) -> None:
    async with Simulator(rate=100, token=jwt(time.time() + 3600)) as sim:
        async with t.collector("token", sim, await t.database()) as c:
            seconds = await t.prom.active("CollectorTokenExpiringSoon", c.metrics_port, 90)
            t.record("CollectorTokenExpiringSoon", "a token whose exp is an hour away", seconds)


async def job_failing(t: Table) -> None:
    dsn = await t.database()
    conn = await asyncpg.connect(dsn)
    try:
        mode = await candles_mode(conn)
    finally:
        await conn.close()
    async with Simulator(rate=200) as sim:
        async with t.collector("job", sim, dsn, COLLECTOR_CANDLE_REFRESH_INTERVAL_S="1") as c:
            await streaming(c)
            if mode == "continuous_aggregates":  # the hand-over to the database's job
                await sql(dsn, "ALTER TABLE candle_refresh_requests RENAME TO gone")
            else:  # the refresh itself
                await sql(dsn, "ALTER FUNCTION refresh_candles(timestamptz) RENAME TO gone")
            seconds = await t.prom.active("CollectorJobFailing", c.metrics_port, 120, task="candle_refresh")
            t.record("CollectorJobFailing", "the candle job's table or function gone", seconds)


async def gaps_unfilled(t: Table) -> None:
    dsn = await t.database()
    async with Simulator(rate=100) as sim:
        universe = small(sim)
        ended = datetime.now(UTC) - timedelta(hours=2)
        # A gap an earlier run recorded two hours ago; Upstox's candle API refuses every request since.
        sim.fail_candles(500, count=1_000_000)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason, instruments) "
                "VALUES (0, $1, $2, $3, 'reconnect', $4)",
                ended - timedelta(minutes=5), ended, ["NSE_FO"], universe["full"],
            )  # fmt: skip
        finally:
            await conn.close()
        async with t.collector("gaps", sim, dsn, universe=universe) as c:
            seconds = await t.prom.active("CollectorGapsUnfilled", c.metrics_port, 120)
            t.record("CollectorGapsUnfilled", "a gap ended 2 h ago, the candle API answering 500", seconds)


async def master_rejected(t: Table) -> None:
    dsn = await t.database()
    async with Simulator(rate=100) as sim:
        today = datetime.now(IST).date()
        conn = await asyncpg.connect(dsn)
        try:
            await store_master(conn, parsed(sim.master), day=today - timedelta(days=1), min_ratio=0.8)
            # Today's master is a tenth of yesterday's: held back by the truncated-master guard.
            load = await store_master(
                conn, parsed(sim.master[: len(sim.master) // 10]), day=today, min_ratio=0.8
            )
            assert not load.current
        finally:
            await conn.close()
        async with t.collector("master", sim, dsn, COLLECTOR_INSTRUMENTS_URL=sim.url + MASTER_PATH) as c:
            seconds = await t.prom.active(
                "CollectorInstrumentMasterRejected", c.metrics_port, 90, reason="held"
            )
            t.record(
                "CollectorInstrumentMasterRejected",
                "a new day's master a tenth of the last one (held)",
                seconds,
            )


def parsed(rows: list[dict[str, Any]]) -> Any:
    """An instrument master as `collector instruments sync` reads it from a file."""
    path = Path(f"/tmp/master-{uuid.uuid4().hex}.json")
    try:
        path.write_text(json.dumps(rows))
        return read_master(str(path))
    finally:
        path.unlink()


async def universe_unknown_keys(t: Table) -> None:
    async with Simulator(rate=100) as sim:
        universe = small(sim)
        universe["ltpc"].append("NSE_EQ|INE000000000")
        async with t.collector("unknown-keys", sim, await t.database(), universe=universe,
                               COLLECTOR_INSTRUMENTS_URL=sim.url + MASTER_PATH,
                               COLLECTOR_UNIVERSE='[{"mode": "ltpc", "segments": ["NSE_INDEX"]}]') as c:  # fmt: skip
            seconds = await t.prom.active("CollectorUniverseKeysUnknown", c.metrics_port, 90)
            t.record(
                "CollectorUniverseKeysUnknown", "a key of COLLECTOR_SUBSCRIPTIONS not in the master", seconds
            )


async def universe_empty(t: Table) -> None:
    """The daily instrument sync brings a master in which the filters match nothing."""
    dsn = await t.database()
    async with Simulator(rate=100) as sim:
        today = datetime.now(IST).date()
        conn = await asyncpg.connect(dsn)
        try:
            await store_master(conn, parsed(sim.master), day=today - timedelta(days=1), min_ratio=0.8)
        finally:
            await conn.close()
        # Today's master: as large, but without a single future (every contract of the filter expired).
        futures = [r for r in sim.master if r.get("instrument_type") == "FUT"]
        rest = [r for r in sim.master if r.get("instrument_type") != "FUT"]
        sim.set_master(rest + [{**r, "instrument_type": "OPTIDX", "instrument_key": r["instrument_key"] + "0"}
                               for r in futures])  # fmt: skip
        sync_at = datetime.now(IST) + timedelta(minutes=2)  # a start takes less than a minute, even loaded
        filters = [{"mode": "full", "segments": ["NSE_FO"], "instrument_types": ["FUT"]}]
        async with t.collector("universe-empty", sim, dsn, universe={},  # filters only
                               COLLECTOR_INSTRUMENTS_URL=sim.url + MASTER_PATH,
                               COLLECTOR_UNIVERSE=json.dumps(filters),
                               COLLECTOR_INSTRUMENT_SYNC_TIME=sync_at.strftime("%H:%M")) as c:  # fmt: skip
            await streaming(c)
            await c.wait_for(
                lambda: c.metric("collector_job_runs_total", task="instrument_sync") >= 1, 200, "the sync"
            )
            seconds = await t.prom.active("CollectorUniverseEmpty", c.metrics_port, 120)
            t.record(
                "CollectorUniverseEmpty",
                "the daily sync brings a master the filters match nothing in",
                seconds,
            )


async def timescale_jobs(t: Table) -> None:
    dsn = await t.database()
    async with Simulator(rate=100) as sim, t.collector("tsdb-job", sim, dsn) as c:
        await streaming(c)
        conn = await asyncpg.connect(dsn)
        try:
            job = await conn.fetchval(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'collector_refresh_late_candles'"
            )
            # Broken on purpose (as a bad deployment or a bug would): the job raises, and runs every second.
            await conn.execute(
                "CREATE OR REPLACE PROCEDURE collector_refresh_late_candles(job_id integer, config jsonb) "
                "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'broken on purpose'; END$$"
            )
            await conn.execute(
                "SELECT alter_job($1, schedule_interval => interval '1 second', next_start => now())", job
            )
        finally:
            await conn.close()
        started = time.monotonic()
        failing = await t.prom.active("CollectorTimescaleJobFailing", c.metrics_port, 120, job_id=str(job))
        t.record("CollectorTimescaleJobFailing", "collector_refresh_late_candles broken on purpose", failing)
        await t.prom.active("CollectorTimescaleJobStale", c.metrics_port, 180, job_id=str(job))
        t.record("CollectorTimescaleJobStale", "the same job, run every second, not succeeding",
                 time.monotonic() - started)  # fmt: skip


async def retention_behind(t: Table) -> None:
    dsn = await t.database()
    async with (
        Simulator(rate=100) as sim,
        t.collector("retention", sim, dsn, COLLECTOR_RETENTION_DAYS="7") as c,
    ):
        await streaming(c)
        conn = await asyncpg.connect(dsn)
        try:
            if await candles_mode(conn) == "continuous_aggregates":
                # The policy `collector run` (re)applied at start, paused: nothing drops chunks.
                await conn.execute(
                    "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                    "WHERE proc_name = 'policy_retention'"
                )
            # (On the Apache build the collector's own retention job ran at start and runs hourly.)
            old = datetime.now(UTC) - timedelta(days=20)
            await conn.execute(
                "INSERT INTO ticks (time, instrument_key, kind, snapshot, feed_time, received_at, ltp) "
                "VALUES ($1, 'NSE_EQ|INE002A01018', 'ltpc', false, $1, $1, 1)", old,
            )  # fmt: skip
        finally:
            await conn.close()
        seconds = await t.prom.active("CollectorRetentionBehind", c.metrics_port, 90, relation="ticks")
        t.record(
            "CollectorRetentionBehind", "ticks 20 days old on disk, retention 7 days, not applied", seconds
        )


# -- the phases that stop the server, or load the machine ---------------------------------------


async def database_away(t: Table, phase1: Awaitable[None]) -> None:
    """The database stopped: the writers fail, the journal grows; a corrupt record meanwhile.

    The collector streams through ``phase1`` (the other rows, which need the server up) first: the
    failure must meet a collector whose every window (a minute of writes) says it was healthy.
    """
    dsn = await t.database()
    async with Simulator(rate=1000, stocks=20) as sim, t.collector("db-away", sim, dsn) as c:
        await streaming(c)
        await phase1
        await asyncio.to_thread(t.server.stop)
        try:
            started = time.monotonic()
            growing = asyncio.create_task(
                t.prom.active("CollectorJournalGrowing", c.metrics_port, 180, connection="0")
            )
            failing = await t.prom.active("CollectorWriterFailing", c.metrics_port, 180)
            t.record("CollectorWriterFailing", "the database server stopped", failing)
            t.record("CollectorJournalGrowing", "the database server stopped", await growing)
            # A record the writer has not read yet turns corrupt on disk (a bit flip): one just past
            # the committed position, so that the writer meets it as soon as the server is back.
            journal = c.workdir / "journal" / "0"
            committed = read_committed(journal) or 0
            for base, path in segments(journal):
                data = path.read_bytes()
                at = data.find(MAGIC, max(committed - base, 0) + 1)
                if base + len(data) > committed and at > 0:
                    break
            else:
                raise AssertionError(f"no uncommitted record after {committed} in {journal}")
            with path.open("r+b") as f:
                f.seek(at + HEADER.size + 5)
                f.write(bytes([data[at + HEADER.size + 5] ^ 0xFF]))
            flipped = time.monotonic()
            assert started
        finally:
            await asyncio.to_thread(t.server.start)
        corrupt = await t.prom.active("CollectorJournalCorrupt", c.metrics_port, 180, connection="0")
        t.record(
            "CollectorJournalCorrupt", "a bit flipped in an uncommitted record", time.monotonic() - flipped
        )
        assert corrupt >= 0
        # Back: the writer commits the journal, and the growing journal is no alert any more.
        await t.prom.inactive("CollectorJournalGrowing", c.metrics_port, 180)
        await t.prom.inactive("CollectorWriterFailing", c.metrics_port, 180)


SLOW_DOWN = (
    """CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$""",
    "CREATE TRIGGER slow_down BEFORE INSERT ON ticks FOR EACH ROW EXECUTE FUNCTION slow_down()",
)


async def writer_behind(t: Table) -> None:
    """Twice what the writer can commit, the database up: the journal grows and commits lag.

    The writer's capacity is made small on purpose, so that twice it costs this machine little and
    moves little with whatever else the machine does: every row takes the database 5 ms more (a
    trigger). A first collector measures that capacity (rows committed per second while offered
    far more); a second one, on a database like it and with no history of lagging, is offered
    twice that from its start. At twice its capacity the oldest uncommitted record ages half a
    second a second: the alert's minute takes about two.
    """
    async with Simulator(rate=500, stocks=20) as sim:
        universe = sim_universe(sim, full=0, ltpc=20)
        # Small batches (a batch grows while one is in flight): a commit every fraction of a second.
        small = {"COLLECTOR_MAX_BATCH_ROWS": "20"}
        dsn = await t.database()
        await sql(dsn, *SLOW_DOWN)
        async with t.collector("capacity", sim, dsn, universe=universe, **small) as c:
            await streaming(c)

            # Behind, a writer commits in lumps (each batch takes what the journal holds), so its
            # rate is measured from one commit to the third after it, however long they take. Offered
            # a few times its capacity, not more: each lump grows by that factor.
            async def commit(after: float) -> tuple[float, float]:
                await c.wait_for(lambda: c.metric("collector_batches_written_total") > after, 180, "a commit")
                return time.monotonic(), await metric(c, "collector_batches_written_total")

            t0, b0 = await commit(await metric(c, "collector_batches_written_total"))
            rows0 = await metric(c, "collector_rows_written_total", table="ticks")
            t1, _ = await commit(b0 + 2)
            capacity = (await metric(c, "collector_rows_written_total", table="ticks") - rows0) / (t1 - t0)
            c.send(signal.SIGKILL)  # its backlog is no concern of this test
        assert 0 < capacity < 0.5 * sim.rate, f"{capacity:,.0f} rows/s committed at {sim.rate:,.0f}/s offered"
        sim.rate = 2 * capacity
        dsn = await t.database()
        await sql(dsn, *SLOW_DOWN)
        async with t.collector("behind", sim, dsn, universe=universe, **small) as c:
            rows0, t0 = await metric(c, "collector_rows_written_total", table="ticks"), time.monotonic()
            latency = asyncio.create_task(t.prom.active("CollectorCommitLatencyHigh", c.metrics_port, 300))
            growing = await t.prom.active("CollectorJournalGrowing", c.metrics_port, 300, connection="0")
            rows1 = await metric(c, "collector_rows_written_total", table="ticks")
            ratio = sim.rate / ((rows1 - rows0) / (time.monotonic() - t0))
            measured = f"twice the writer's capacity ({capacity:,.0f} rows/s; offered/committed {ratio:.1f})"
            t.record("CollectorJournalGrowing", measured, growing)
            t.record("CollectorCommitLatencyHigh", measured, await latency)
            sim.rate = 0  # the load falls: it catches up, and the journal is no alert any more
            await t.prom.inactive("CollectorJournalGrowing", c.metrics_port, 400)


Scenario = Callable[[Table], Awaitable[None]]
# Each flavour runs the rows that involve the database; the first runs the others too.
DATABASE_ROWS: list[Scenario] = [
    dead_letters, job_failing, gaps_unfilled, master_rejected, universe_empty, timescale_jobs,
    retention_behind,
]  # fmt: skip
OTHER_ROWS: list[Scenario] = [
    collector_down, collector_absent, feed_disconnected, journal_full, process_restarting,
    subscriptions_rejected, token_expiring, universe_unknown_keys,
]  # fmt: skip


def both_servers() -> list[Server]:
    return [server_of(f) for f in chosen_flavours() if f in FLAVOURS]


@pytest.mark.limit(1500)
@pytest.mark.timeout(1600)
async def test_every_alert_becomes_pending_on_the_failure_it_names(tmp_path: Path, figures: Figures) -> None:
    servers = await asyncio.to_thread(both_servers)
    prom = Prometheus(tmp_path / "prometheus").start()
    tables = [Table(s, prom, tmp_path) for s in servers]
    try:
        timescale = [t for t in tables if t.server.flavour == "tsl"]
        # The rows that leave the servers running, on both flavours at once, with the writer behind
        # (its database made slow: its own, so the others do not notice). CollectorNoTicks waits five
        # minutes of silence: it runs through every phase.
        silent = asyncio.create_task(no_ticks(tables[0]))
        work = []
        for i, t in enumerate(tables):
            scenarios = DATABASE_ROWS + (OTHER_ROWS if i == 0 else [])
            if not timescale or t is not timescale[0]:
                scenarios = [s for s in scenarios if s is not timescale_jobs]  # the Apache build has none
            work += [scenario(t) for scenario in scenarios]
            work.append(writer_behind(t))
        phase1 = asyncio.ensure_future(asyncio.gather(*work))
        # Then each server stopped, meeting a collector that has streamed through all of the above.
        away = [asyncio.create_task(database_away(t, asyncio.shield(phase1))) for t in tables]
        await phase1
        await asyncio.gather(*away)
        await silent
    finally:
        prom.close()
        for t in tables:
            with contextlib.suppress(Exception):
                await t.drop_databases()
    measured = [r for t in tables for r in t.rows]
    for r in sorted(measured, key=lambda r: (r.alert, r.flavour)):
        figures(f"{r.alert} [{r.flavour}]: pending {r.seconds:.0f} s after {r.failure}")
    expected = {
        "CollectorDown", "CollectorAbsent", "CollectorFeedDisconnected", "CollectorNoTicks",
        "CollectorCommitLatencyHigh", "CollectorWriterFailing", "CollectorJournalGrowing", "CollectorJournalFull",
        "CollectorJournalCorrupt", "CollectorProcessRestarting", "CollectorDeadLetters",
        "CollectorSubscriptionsRejected", "CollectorTokenExpiringSoon", "CollectorJobFailing",
        "CollectorGapsUnfilled", "CollectorInstrumentMasterRejected", "CollectorUniverseEmpty",
        "CollectorUniverseKeysUnknown", "CollectorRetentionBehind",
    } | ({"CollectorTimescaleJobFailing", "CollectorTimescaleJobStale"} if timescale else set())  # fmt: skip
    assert {r.alert for r in measured} == expected
    assert expected | {"CollectorTimescaleJobFailing", "CollectorTimescaleJobStale"} == alerts_in_rules()


def alerts_in_rules() -> set[str]:
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


# -- normal operation: nothing pages ------------------------------------------------------------


async def normal_operation(t: Table) -> str:
    """Start, three clean restarts, a writer reconnect, a database restart, a market close and
    reopen, a universe change by the daily instrument sync: no alert may become even pending."""
    dsn = await t.database()
    async with Simulator(rate=1000, stocks=20) as sim:
        workdir = t.root / f"{t.server.flavour}-normal"
        workdir.mkdir()
        # No daily sync until the last process (below) asks for one.
        sync_at = (datetime.now(IST) + timedelta(hours=1)).strftime("%H:%M")
        filters = [
            {"mode": "full", "segments": ["NSE_FO"], "instrument_types": ["FUT"], "nearest_expiries": 1},
            {"mode": "ltpc", "segments": ["NSE_INDEX"]},
        ]
        env = collector_env(
            sim, dsn, COLLECTOR_SUBSCRIPTIONS="{}", COLLECTOR_UNIVERSE=json.dumps(filters),
            COLLECTOR_INSTRUMENTS_URL=sim.url + MASTER_PATH, COLLECTOR_INSTRUMENT_SYNC_TIME=sync_at,
            COLLECTOR_METRICS_PORT=str(free_port()), COLLECTOR_CANDLE_REFRESH_INTERVAL_S="5",
            # Small segments: committed ones are deleted, so restarts meet a journal that starts past 0.
            COLLECTOR_JOURNAL_SEGMENT_BYTES=str(1024 * 1024),
        )  # fmt: skip
        port = int(env["COLLECTOR_METRICS_PORT"])
        t.prom.scrape(port, f"{t.server.flavour}-normal")
        began = time.time()
        c = Collector(workdir, env).start()
        steps = []
        try:
            await streaming(c)
            await t.prom.scraped(port)
            await asyncio.sleep(20)
            steps.append("start")
            for n in range(3):
                rc, _ = await c.stop(60)
                assert rc == 0, c.tail()
                if n == 2:
                    # The last process runs the daily instrument sync two or three minutes from now: after
                    # the new master below is published, whatever the steps in between take.
                    soon = (datetime.now(IST) + timedelta(minutes=3)).strftime("%H:%M")
                    env = {**env, "COLLECTOR_INSTRUMENT_SYNC_TIME": soon}
                c = Collector(workdir, env).start()
                await c.wait_for(
                    lambda c=c: c.metric("collector_feed_connected") == 2, 60, "subscribed again"
                )
                await asyncio.sleep(10)
                steps.append(f"clean restart {n + 1}")
            # Today's master, re-published: the nearest futures have expired, so the daily sync moves
            # the connections to the next expiry (unsub and sub, no reconnect).
            yesterday = int((datetime.now(UTC) - timedelta(days=1)).timestamp() * 1000)
            nearest: dict[str, int] = {}
            for r in sim.master:
                if r["instrument_type"] == "FUT" and r["segment"] == "NSE_FO":
                    nearest[r["name"]] = min(nearest.get(r["name"], r["expiry"]), r["expiry"])
            sim.set_master([{**r, "expiry": yesterday} if r["instrument_type"] == "FUT"
                            and nearest.get(r["name"]) == r["expiry"] else r for r in sim.master])  # fmt: skip
            before = {k for k in sim.traded if k.startswith("NSE_FO")}
            killed = await terminate_writers(t.server, dsn)
            assert killed >= 1
            await asyncio.sleep(15)
            steps.append(f"{killed} writer sessions ended by the server, reconnected")
            await asyncio.to_thread(t.server.stop)
            await asyncio.to_thread(t.server.start)
            await c.wait_for(lambda: c.metric("collector_database_up") == 1, 60, "writing again")
            await asyncio.sleep(15)
            steps.append("database server restarted")
            await sim.set_market(dict.fromkeys(sim.segments, "NORMAL_CLOSE"))
            await asyncio.sleep(20)
            await sim.set_market(dict.fromkeys(sim.segments, "NORMAL_OPEN"))
            await asyncio.sleep(20)
            steps.append("market closed for 20 s and reopened")
            await c.wait_for(
                lambda: c.metric("collector_job_runs_total", task="instrument_sync") >= 1, 300, "the sync"
            )
            await c.wait_for(
                lambda: {k for k in sim.traded if k.startswith("NSE_FO")} > before, 60, "new keys"
            )
            await asyncio.sleep(20)
            steps.append("universe moved to the next expiry by the daily sync")
            rc, _ = await c.stop(60)
            assert rc == 0, c.tail()
        finally:
            c.kill()
            t.prom.forget(port)
        span = int(time.time() - began) + 5
        active = await asyncio.to_thread(
            t.prom.query, f'max_over_time(ALERTS{{instance="127.0.0.1:{port}"}}[{span}s])'
        )
        assert not active, [a["metric"] for a in active]
        # ... and not for want of data: Prometheus scraped it all along, restarts apart.
        scrapes = await asyncio.to_thread(
            t.prom.query, f'sum_over_time(up{{instance="127.0.0.1:{port}"}}[{span}s])'
        )
        assert scrapes and float(scrapes[0]["value"][1]) > 0.8 * span, scrapes
        return f"[{t.server.flavour}] {span} s of " + ", ".join(steps) + ": no alert pending or firing"


async def terminate_writers(server: Server, dsn: str) -> int:
    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
            "AND application_name LIKE 'collector writer%'",
            dsn.rsplit("/", 1)[1],
        )
    finally:
        await conn.close()
    return len(rows)


@pytest.mark.limit(1200)
@pytest.mark.timeout(1300)
async def test_normal_operation_makes_no_alert_pending(tmp_path: Path, figures: Figures) -> None:
    servers = await asyncio.to_thread(both_servers)
    prom = Prometheus(tmp_path / "prometheus").start()
    tables = [Table(s, prom, tmp_path) for s in servers]
    try:
        for line in await asyncio.gather(*(normal_operation(t) for t in tables)):
            figures(line)
    finally:
        prom.close()
        for t in tables:
            with contextlib.suppress(Exception):
                await t.drop_databases()
