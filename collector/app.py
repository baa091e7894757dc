"""``collector run``: startup -> main loop -> shutdown.

Startup migrates (unless switched off), resolves the universe from the
instrument master, shards it over the configured connections, and starts the
writer, the feed connections, the scheduler and the metrics endpoint. The
main loop waits for a stop request; shutdown stops the feed first, then lets
the writer drain within ``shutdown_timeout_s`` (what is left goes to the spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, start_http_server

from collector import __version__
from collector.backoff import full_jitter
from collector.db.instruments import load_master
from collector.db.jobs import Jobs, apply_retention_policy
from collector.db.migrate import migrate
from collector.exceptions import CollectorError
from collector.feed.auth import TokenSource, token_expiry
from collector.feed.connection import FeedConnection, FeedOptions, authorize_limiter
from collector.market import MarketState
from collector.metrics import Metrics
from collector.protocol import DEFAULT_LIMITS, shard_universe
from collector.records import MODES, Mode
from collector.settings import Settings
from collector.sink.spool import Spool
from collector.sink.writer import Writer
from collector.universe import resolve_universe

__all__ = ["apply_universe", "connect_with_retry", "run"]

logger = logging.getLogger(__name__)


async def connect_with_retry(
    connect: Callable[[], Awaitable[asyncpg.Connection]], what: str
) -> asyncpg.Connection:
    """Connect, retrying with backoff: the database may start after us."""
    delays = full_jitter(base_s=0.5, cap_s=10.0)
    while True:
        try:
            return await connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            delay = next(delays)
            logger.warning("%s: database not reachable (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)


async def _universe(conn: asyncpg.Connection, settings: Settings) -> dict[Mode, list[str]]:
    rows: list[Any] = [dict(r) for r in await conn.fetch("SELECT * FROM instruments_current")]
    if settings.universe and not rows:
        logger.info("no instrument master stored yet; loading %s", settings.instruments_url)
        rows = await load_master(conn, settings.instruments_url)
    if not rows:
        logger.warning("no instrument master: subscribing the configured keys unchecked")
        return {m: sorted(set(k)) for m, k in settings.subscriptions.items() if k}
    universe, _unknown = resolve_universe(rows, explicit=settings.subscriptions, filters=settings.universe)
    return universe


async def apply_universe(
    feeds: list[FeedConnection], universe: dict[Mode, list[str]], metrics: Metrics
) -> dict[Mode, list[str]]:
    """Move running connections to a new universe without reconnecting.

    Keys that left are unsubscribed, keys whose mode changed get change_mode,
    new keys go to the least loaded connection with room for them. Used after
    the daily instrument sync, when contracts roll (near-month futures, new
    expiries). Returns the keys that fit nowhere.
    """
    wanted: dict[str, Mode] = {}
    for mode in ("full_d30", "full", "option_greeks", "ltpc"):
        for key in universe.get(mode, []):
            wanted.setdefault(key, mode)
    for feed in feeds:
        current = {k: m for m, keys in feed.shard.keys.items() for k in keys}
        gone = [k for k in current if k not in wanted]
        if gone:
            await feed.unsubscribe(gone)
        for mode in MODES:
            moved = [k for k, m in current.items() if wanted.get(k) == mode and m != mode]
            if moved:
                try:
                    await feed.change_mode(mode, moved)
                except ValueError:
                    await feed.unsubscribe(moved)  # placed again below
    placed = {k for f in feeds for keys in f.shard.keys.values() for k in keys}
    rejected: dict[Mode, list[str]] = {}
    for mode in MODES:
        todo = [k for k, m in wanted.items() if m == mode and k not in placed]
        for feed in sorted(feeds, key=lambda f: f.shard.size):
            n = min(feed.room(mode), len(todo))
            if n:
                await feed.subscribe(mode, todo[:n])
                todo = todo[n:]
        if todo:
            rejected[mode] = todo
    for mode in MODES:
        metrics.universe.labels(mode).set(len(universe.get(mode, [])))
        metrics.sub_rejected.labels(mode).set(len(rejected.get(mode, [])))
    logger.info(
        "universe applied: %d keys, %d fit no connection", len(wanted), sum(len(v) for v in rejected.values())
    )
    return rejected


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
    serve_metrics: bool = True,
) -> None:
    """Run the collector until ``stop`` is set."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, connections=settings.connections, version=__version__)
    dsn = settings.database_url.get_secret_value()

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, command_timeout=120, timeout=10)

    metrics_server = None
    if serve_metrics:
        metrics_server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
        logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    # -- startup --
    conn = await connect_with_retry(connect, "startup")
    try:
        if settings.migrate_on_start:
            await migrate(conn)
            await apply_retention_policy(conn, settings.retention_days)
        universe = await _universe(conn, settings)
    finally:
        await conn.close()
    shards, rejected = shard_universe(universe, settings.connections, DEFAULT_LIMITS)
    for mode in MODES:
        metrics.universe.labels(mode).set(len(universe.get(mode, [])))
        metrics.sub_rejected.labels(mode).set(len(rejected.get(mode, [])))
        metrics.limit.labels(mode, "alone").set(DEFAULT_LIMITS.alone[mode])
        metrics.limit.labels(mode, "mixed").set(DEFAULT_LIMITS.mixed[mode])
    if rejected:
        logger.error(
            "%d keys fit no connection within Upstox's limits and are not subscribed",
            sum(len(v) for v in rejected.values()),
        )
    if not shards:
        logger.error("the universe is empty: set COLLECTOR_SUBSCRIPTIONS or COLLECTOR_UNIVERSE")
    market = MarketState()
    spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync)
    writer = Writer(
        connect=connect,
        metrics=metrics,
        spool=spool,
        market=market,
        queue_max_frames=settings.queue_max_frames,
        max_batch_rows=settings.max_batch_rows,
        flush_interval_s=settings.flush_interval_s,
        max_pending_rows=settings.max_pending_rows,
        spill_after_s=settings.spill_after_s,
    )
    await writer.seed()
    tokens = TokenSource(
        token=settings.upstox_token.get_secret_value() if settings.upstox_token else None,
        token_file=settings.upstox_token_file,
    )
    options = FeedOptions(
        chunk_size=settings.chunk_size,
        ping_interval_s=settings.ping_interval_s,
        ping_timeout_s=settings.ping_timeout_s,
        stall_timeout_s=settings.stall_timeout_s,
        backoff_base_s=settings.backoff_base_s,
        backoff_cap_s=settings.backoff_cap_s,
    )
    limiter = authorize_limiter()
    feeds = [
        FeedConnection(
            shard,
            api_url=settings.upstox_api_url,
            tokens=tokens,
            deliver=writer.deliver,
            market=market,
            metrics=metrics,
            limiter=limiter,
            options=options,
        )
        for shard in shards
    ]
    jobs = Jobs(
        connect=connect,
        metrics=metrics,
        late_data=writer.take_oldest_committed,
        retention_days=settings.retention_days,
    )

    async def sync() -> bool:
        async def work(c: asyncpg.Connection) -> None:
            await load_master(c, settings.instruments_url)
            # Contracts roll: re-resolve the universe from today's master and apply it.
            await apply_universe(feeds, await _universe(c, settings), metrics)

        return await jobs.run("instrument_sync", work)

    def publish_token_expiry() -> None:
        # Read again every minute: a rotated token file changes the expiry while
        # the socket stays up on the old one.
        with contextlib.suppress(CollectorError):
            metrics.token_expiry.set(token_expiry(tokens.read()) or 0)

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(publish_token_expiry, "interval", seconds=60, next_run_time=datetime.now(UTC))
    jobs.schedule(
        scheduler,
        refresh_interval_s=settings.candle_refresh_interval_s,
        sync=sync if settings.universe else None,
        sync_time=settings.instrument_sync_time,
    )

    # -- main loop --
    writer_task = asyncio.create_task(writer.run(), name="writer")
    feed_tasks = [asyncio.create_task(f.run(), name=f"feed-{f.id}") for f in feeds]
    scheduler.start()
    logger.info("collector running: %d connections, %d keys", len(feeds), sum(s.size for s in shards))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, writer_task, *feed_tasks], return_when=asyncio.FIRST_COMPLETED)

    # -- shutdown --
    logger.info("shutting down")
    scheduler.shutdown(wait=False)
    for task in feed_tasks:
        task.cancel()
    await asyncio.gather(*feed_tasks, return_exceptions=True)
    writer_task.cancel()
    writer_error: BaseException | None = None
    try:
        await writer_task
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # drain what was accepted first, then report it
        logger.exception("writer failed")
        writer_error = exc
    stopper.cancel()
    complete = await writer.drain(settings.shutdown_timeout_s)
    if not complete:
        logger.warning("shutdown: %d rows left in the spool for the next start", spool.rows)
    await jobs.refresh_candles()
    spool.close()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    if writer_error is not None:
        raise writer_error
