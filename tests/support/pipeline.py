"""Drive the writer the way the collector does: frames in a real journal, a real writer, a real database.

``encode_ticks`` turns ticks back into protobuf frames (so tests that build
ticks by hand still go through the decoder), ``journal_frames`` appends
frames to a journal folder, ``store`` runs a :class:`~collector.writer.writer.Writer`
on that folder until everything on disk is committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from collector.core.records import Tick
from collector.journal.appender import JournalAppender
from collector.journal.format import FRAME
from collector.metrics import WriterMetrics
from collector.proto import MarketDataFeedV3_pb2 as pb
from collector.simulator.market import SimMarket, generate_master
from collector.writer.writer import Writer
from tests.support.options import journal_options, writer_options

__all__ = ["encode_ticks", "journal_frames", "make_writer", "sim_frames", "store"]

Connect = Callable[[], Awaitable[asyncpg.Connection]]


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def encode_ticks(
    ticks: Iterable[Tick], *, snapshot: bool = False, feed_time: datetime | None = None
) -> bytes:
    """One FeedResponse carrying ``ticks`` (kinds ltpc, option_greeks, full), as Upstox would send it."""
    ticks = list(ticks)
    msg = pb.FeedResponse(currentTs=_ms(feed_time or ticks[0].time))
    if not snapshot:
        msg.type = pb.live_feed
    for t in ticks:
        feed = msg.feeds[t.instrument_key]
        if t.kind == "ltpc":
            ltpc = feed.ltpc
        elif t.kind == "option_greeks":
            ltpc = feed.firstLevelWithGreeks.ltpc
            feed.firstLevelWithGreeks.vtt = t.vtt or 0
            feed.requestMode = pb.option_greeks
        elif t.kind == "full":
            mff = feed.fullFeed.marketFF
            ltpc = mff.ltpc
            mff.vtt = t.vtt or 0
            feed.requestMode = pb.full_d5
        else:
            raise ValueError(f"cannot encode kind {t.kind}")
        ltpc.ltp, ltpc.ltt, ltpc.ltq, ltpc.cp = t.ltp, _ms(t.time), t.ltq or 0, t.cp or 0.0
    return msg.SerializeToString()


def sim_frames(n_frames: int = 5, *, stocks: int = 10, seed: int = 5) -> list[bytes]:
    """Live frames of every mode from the simulator's market, as the feed would read them."""
    market = SimMarket(generate_master(stocks), seed=seed)
    keys = list(market.instruments)
    modes = ["ltpc", "full", "option_greeks", "full_d30"]
    out = []
    now_ms = int(time.time() * 1000)
    for i in range(n_frames):
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now_ms + i)
        for j, key in enumerate(keys):
            inst = market.tick(key, now_ms + i)
            market.fill(msg.feeds[key], inst, modes[j % 4])  # type: ignore[arg-type]
        out.append(msg.SerializeToString())
    return out


def journal_frames(directory: Path, frames: Iterable[bytes], *, kind: int = FRAME) -> int:
    """Append frames to the journal in ``directory``; return its end position."""
    with JournalAppender(directory, journal_options(fsync="never")) as journal:
        for frame in frames:
            journal.append(kind, frame)
        return journal.position


def make_writer(
    dsn: str | Connect,
    directory: Path,
    *,
    connection: int = 0,
    clock: Callable[[], float] = time.monotonic,
    **options: Any,
) -> tuple[Writer, CollectorRegistry]:
    """A writer for the journal in ``directory`` with fast retries, and its metrics registry.

    ``options`` change its :class:`~collector.options.WriterOptions` (a batch waits 0.05 s unless told).
    """
    registry = CollectorRegistry()

    async def connect() -> asyncpg.Connection:
        if callable(dsn):
            return await dsn()
        return await asyncpg.connect(dsn, timeout=5)

    options.setdefault("flush_interval_s", 0.05)
    writer = Writer(
        directory,
        connection=connection,
        connect=connect,
        metrics=WriterMetrics(registry, connection=connection),
        options=writer_options(**options),
        backoff=lambda: iter(lambda: 0.05, None),
        clock=clock,
    )
    return writer, registry


async def store(
    dsn: str | Connect, directory: Path, *, timeout_s: float = 60.0, **kw: object
) -> CollectorRegistry:
    """Commit everything in the journal at ``directory``, then return the writer's metrics."""
    writer, registry = make_writer(dsn, directory, **kw)
    drain = asyncio.Event()
    drain.set()
    await asyncio.wait_for(writer.run(drain), timeout_s)
    return registry
