"""Build a Writer against a real database for tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from collector.metrics import Metrics
from collector.sink.spool import Spool
from collector.sink.writer import Writer


def make_writer(
    dsn: str | Callable[[], Awaitable[asyncpg.Connection]], spool_dir: Path, **kw: object
) -> tuple[Writer, CollectorRegistry, Spool]:
    registry = CollectorRegistry()
    spool = Spool(spool_dir, max_bytes=1 << 30, fsync=False)

    async def connect() -> asyncpg.Connection:
        if callable(dsn):
            return await dsn()
        return await asyncpg.connect(dsn, timeout=5)

    kw.setdefault("flush_interval_s", 0.05)
    writer = Writer(
        connect=connect,
        metrics=Metrics(registry),
        spool=spool,
        backoff=lambda: iter(lambda: 0.05, None),
        **kw,  # type: ignore[arg-type]
    )
    return writer, registry, spool
