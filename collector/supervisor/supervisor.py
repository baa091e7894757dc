"""``collector run``: the supervisor. Startup → main loop → shutdown.

The collector is one supervisor process and, per connection, a feed process
(socket → journal) and a writer process (journal → TimescaleDB), so decoding
and storing use every core and reading a socket never waits on either.

- **Startup** locks the journal folder (a second collector on it refuses),
  serves ``/metrics``, waits for the database (a stop request ends the wait; a
  URL that can never work exits at once), migrates, resolves the universe and
  shards it within Upstox's limits (:mod:`collector.supervisor.universe`), then
  starts the writers, the feeds and the scheduled jobs.
- **Main loop**: wait for a stop request; children that exit are restarted
  with backoff; the supervisor authorizes their connection attempts (one token
  and one REST limiter for the whole collector) and moves them to a new
  universe after the daily instrument sync.
- **Shutdown**, within ``shutdown_timeout_s`` whatever the database does: the
  feeds stop reading, then the writers commit what the journals hold; what they
  cannot commit in time stays in the journal for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from collector import __version__
from collector.core.calendar import Calendar, parse_hours
from collector.core.shards import Shard
from collector.db.connect import COMMAND_TIMEOUT_S, JOB_COMMAND_TIMEOUT_S, connect, connect_until, where
from collector.db.jobs import Jobs, apply_retention_policy, candles_mode
from collector.db.migrate import migrate, pending
from collector.exceptions import CollectorError, ConfigError, UpstoxError
from collector.ipc.messages import (
    Authorize,
    Authorized,
    AuthorizeFailed,
    Connected,
    Disconnected,
    FeedSpec,
    Keys,
    MarketInfo,
    Message,
    WriterSpec,
)
from collector.ipc.metrics import serving_registry, use_multiprocess
from collector.journal.files import lock_file
from collector.metrics import SupervisorMetrics
from collector.settings import Settings
from collector.supervisor.children import Child
from collector.supervisor.gapwork import GapWork
from collector.supervisor.scrape import DatabaseWatch, Observed, ScrapeView
from collector.supervisor.serving import serve_metrics
from collector.supervisor.universe import MASTER_RETRY_S, Universe
from collector.supervisor.upstox import TokenSource, UpstoxRest, rest_limiter, token_expiry

__all__ = ["Supervisor", "run"]

logger = logging.getLogger(__name__)

# Never handed to a child process through its environment.
_SECRET_ENV = ("COLLECTOR_DATABASE_URL", "COLLECTOR_UPSTOX_TOKEN")


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """Run the collector until ``stop`` is set."""
    await Supervisor(settings, stop).run()


class Supervisor:
    """The supervisor of one collector: its children, jobs and metrics."""

    def __init__(self, settings: Settings, stop: asyncio.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.dsn = settings.database_url.get_secret_value()
        self.feeds: dict[int, Child] = {}
        self.writers: dict[int, Child] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._since: dict[int, datetime] = {}
        self.metrics: SupervisorMetrics
        self.universe: Universe  # the keys of each connection, from startup on
        self.metrics_dir: Path
        self.metrics_port = settings.metrics_port
        self.calendar = Calendar(parse_hours(settings.market_hours))  # until the holidays come in

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            if not await self.startup(stack):
                return
            await self.main_loop()
            await self.shutdown()

    # -- startup ----------------------------------------------------------------------

    async def startup(self, stack: AsyncExitStack) -> bool:
        """Everything before streaming; False when a stop request came first."""
        s = self.settings
        if not (s.subscriptions or s.universe):
            raise ConfigError(
                "COLLECTOR_UNIVERSE",
                "nothing to subscribe: set COLLECTOR_SUBSCRIPTIONS or COLLECTOR_UNIVERSE",
            )
        if s.upstox_token is None and s.upstox_token_file is None:
            # Retrying cannot help: nothing will ever authorize. (A token file may be written later.)
            raise ConfigError(
                "COLLECTOR_UPSTOX_TOKEN",
                "no Upstox token: set COLLECTOR_UPSTOX_TOKEN, or COLLECTOR_UPSTOX_TOKEN_FILE to a file holding one",
            )
        root = s.journal_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError("COLLECTOR_JOURNAL_DIR", f"{root} is not usable: {exc.strerror}") from None
        lock = lock_file(root / "collector.lock", "journal folder")
        stack.callback(os.close, lock)

        self.metrics_dir = Path(tempfile.mkdtemp(prefix="collector-metrics-"))
        stack.callback(shutil.rmtree, self.metrics_dir, True)
        use_multiprocess(self.metrics_dir, clean=True)
        self.metrics = SupervisorMetrics(CollectorRegistry(), connections=s.connections, version=__version__)
        self.universe = Universe(
            subscriptions=s.subscriptions, filters=s.universe, instruments_url=s.instruments_url,
            instruments_min_ratio=s.instruments_min_ratio, connections=s.connections,
            metrics=self.metrics, carry=self._carry,
        )  # fmt: skip
        # What no child can say for itself (the journals' lag, the market while nobody is connected,
        # the database's own jobs) is computed at each scrape from what the supervisor knows.
        self.database_watch = DatabaseWatch(self._connect_watch)
        stack.push_async_callback(self.database_watch.close)
        self.observed = Observed(
            journal_root=root,
            calendar=lambda: self.calendar,
            database=self.database_watch,
        )
        registry = serving_registry(self.metrics_dir)
        registry.register(ScrapeView(asyncio.get_running_loop(), self.observed.snapshot))
        server = serve_metrics(registry, s.metrics_host, s.metrics_port)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        self.metrics_port = server.server_port
        logger.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)

        conn = await connect_until(self.dsn, self.stop, "startup", command_timeout=COMMAND_TIMEOUT_S)
        if conn is None:
            logger.info("stopped before the database could be reached")
            return False
        try:
            if s.migrate_on_start:
                await migrate(conn)
                await apply_retention_policy(conn, s.retention_days)
            elif missing := await pending(conn):
                # Say so before the first query of a table that is not there yet.
                raise ConfigError(
                    "COLLECTOR_MIGRATE_ON_START",
                    f"false, and the database at {where(self.dsn)} lacks {len(missing)} of its "
                    f"migrations (from {missing[0].version:03d}_{missing[0].name}): run `collector migrate` "
                    "first (as the database's owner)",
                )
            if s.retention_days is not None and await candles_mode(conn) != "continuous_aggregates":
                # No retention policy on this build: the collector's own job applies the setting.
                self.observed.retention_s = {"ticks": s.retention_days * 86_400.0}
            universe = await self.universe.resolve(conn)
            for row in await conn.fetch(
                "SELECT connection, max(disconnected_at) AS at FROM feed_sessions GROUP BY 1"
            ):
                self._since[row["connection"]] = row["at"]
        finally:
            await conn.close()

        self.universe.start(universe)
        shards = self.universe.shards

        tokens = TokenSource(
            token=s.upstox_token.get_secret_value() if s.upstox_token else None,
            token_file=s.upstox_token_file,
        )
        self.tokens = tokens
        m = self.metrics
        self.upstox = UpstoxRest(
            s.upstox_api_url, tokens, rest_limiter(),
            on_call=lambda api: m.rest_requests.labels(api).inc(),
            on_failure=lambda api, reason: m.rest_failures.labels(api, reason).inc(),
            on_token=lambda token: m.token_expiry.set(token_expiry(token) or 0),
        )  # fmt: skip

        async def connect_db() -> asyncpg.Connection:
            return await connect(self.dsn, command_timeout=JOB_COMMAND_TIMEOUT_S)

        self.jobs = Jobs(connect=connect_db, metrics=self.metrics, retention_days=s.retention_days)
        self.gapwork = GapWork(
            upstox=self.upstox, jobs=self.jobs, metrics=self.metrics,
            calendar=self.calendar, feeds=lambda: list(self.feeds.values()),
            shard=shards.get, tasks=self._tasks,
        )  # fmt: skip
        self.observed.follow_calendar(lambda: self.gapwork.calendar)  # with the holidays, once they come
        journals = {int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
        for connection in sorted(journals | set(shards)):
            self._start_writer(connection)
        for connection in sorted(shards):
            self._start_feed(connection)
        self._schedule(stack)
        logger.info(
            "collector running: %d connections, %d keys",
            len(self.feeds), sum(shard.size for shard in shards.values()),
        )  # fmt: skip
        return True

    async def _connect_watch(self) -> asyncpg.Connection:
        # Its own session, named, so the database's figures never wait on (or hold up) a write.
        return await connect(
            self.dsn, command_timeout=COMMAND_TIMEOUT_S,
            server_settings={"application_name": "collector supervisor"},
        )  # fmt: skip

    # -- children ---------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env

    def _journal(self, connection: int) -> Path:
        return self.settings.journal_dir / str(connection)

    def _start_feed(self, connection: int) -> None:
        s = self.settings

        def spec() -> FeedSpec:
            shard = self.universe.shard(connection)
            return FeedSpec(
                connection=connection,
                keys={m: list(k) for m, k in shard.keys.items()},
                journal_dir=str(self._journal(connection)),
                options=s.feed_options(),
                journal=s.journal_options(),
                calendar=self.gapwork.calendar,
                since=self._since.get(connection),
                log_level=s.log_level,
                metrics_dir=str(self.metrics_dir),
            )

        child = Child(
            "feed", connection, module="collector.feed.process", spec=spec, env=self._child_env(),
            metrics=self.metrics, metrics_dir=self.metrics_dir, on_message=self._on_feed_message,
            on_exit=lambda child: self.observed.feed_exited(child.connection),
        )  # fmt: skip
        self.feeds[connection] = child
        self.observed.feed_started(connection)
        self._tasks.append(asyncio.create_task(child.run(), name=f"supervise {child.name}"))

    def _start_writer(self, connection: int) -> None:
        s = self.settings

        def spec() -> WriterSpec:
            return WriterSpec(
                connection=connection,
                journal_dir=str(self._journal(connection)),
                database_url=self.dsn,
                options=s.writer_options(),
                log_level=s.log_level,
                metrics_dir=str(self.metrics_dir),
            )

        child = Child(
            "writer", connection, module="collector.writer.process", spec=spec, env=self._child_env(),
            metrics=self.metrics, metrics_dir=self.metrics_dir,
        )  # fmt: skip
        self.writers[connection] = child
        self._tasks.append(asyncio.create_task(child.run(), name=f"supervise {child.name}"))

    async def _on_feed_message(self, child: Child, message: Message) -> None:
        match message:
            case Connected(at=at):
                self.observed.feed_connected(child.connection)
                # The gap (if any) follows through the journal: backfill it soon.
                self.gapwork.connected(child.connection, at)
            case Disconnected(at=at):
                self.observed.feed_disconnected(child.connection, at)
            case MarketInfo(statuses=statuses, at=at):
                self.observed.market_info(child.connection, statuses, at)
            case Authorize():
                # Holidays first: the first connection of a start-up records the gap since the last run.
                await self.gapwork.send_calendar(child)
                try:
                    uri = await self.upstox.authorize()
                except UpstoxError as exc:
                    await child.send(AuthorizeFailed.of(exc))
                    return
                await child.send(Authorized(uri))

    async def _carry(self, shard: Shard) -> None:
        """The connection's keys changed: tell its feed, or start one (and a writer) for it."""
        if shard.shard_id in self.feeds:
            await self.feeds[shard.shard_id].send(Keys(shard.keys))
        else:
            if shard.shard_id not in self.writers:
                self._start_writer(shard.shard_id)
            self._start_feed(shard.shard_id)

    # -- jobs -------------------------------------------------------------------------

    def _schedule(self, stack: AsyncExitStack) -> None:
        s = self.settings

        async def sync() -> bool:
            return await self.jobs.run("instrument_sync", self.universe.sync)

        def publish_token_expiry() -> None:
            # Read again every minute: a rotated token file changes the expiry.
            with contextlib.suppress(CollectorError):
                self.metrics.token_expiry.set(token_expiry(self.tokens.read()) or 0)

        async def load_master() -> None:
            # Started without a master (it could not be loaded): try again until one is in force.
            if not self.universe.has_master:
                await sync()

        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(publish_token_expiry, "interval", seconds=60, next_run_time=datetime.now(UTC))
        if s.universe:
            scheduler.add_job(load_master, "interval", seconds=MASTER_RETRY_S)
        self.jobs.schedule(
            scheduler,
            refresh_interval_s=s.candle_refresh_interval_s,
            sync=sync if s.universe else None,
            sync_time=s.instrument_sync_time,
        )
        self.gapwork.schedule(scheduler)
        scheduler.start()
        stack.callback(scheduler.shutdown, False)

    # -- main loop and shutdown -------------------------------------------------------

    async def main_loop(self) -> None:
        await self.stop.wait()

    async def shutdown(self) -> None:
        """Stop reading, then commit what the journals hold, all within the timeout."""
        budget = self.settings.shutdown_timeout_s
        deadline = time.monotonic() + budget
        logger.info("shutting down (within %.0fs)", budget)
        await asyncio.gather(*(c.stop(min(3.0, budget / 3)) for c in self.feeds.values()))
        remaining = max(deadline - time.monotonic() - 0.5, 1.0)
        drained = await asyncio.gather(*(c.stop(remaining, drain=True) for c in self.writers.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not all(drained):
            logger.warning("shutdown: the journals keep what was not committed; the next start stores it")
        else:
            logger.info("shutdown complete: everything read is committed")
