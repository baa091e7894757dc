"""The writer process of one connection: journal in, TimescaleDB out.

Started by the supervisor as ``python -m collector.writer.process``; the
database URL comes in its spec on stdin. It runs at a lower CPU priority
(``nice`` +5) than the feed processes: when the machine is saturated, reading
the sockets comes first and the journal absorbs the difference. It answers
:class:`~collector.ipc.messages.Drain` (store everything on disk, then exit)
and :class:`~collector.ipc.messages.Stop` (exit now; what is not committed
stays in the journal for the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from collector.db.connect import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S
from collector.ipc.channel import Channel
from collector.ipc.child import run_child
from collector.ipc.messages import Drain, Stop, WriterSpec
from collector.journal.files import lock_file
from collector.metrics import WriterMetrics
from collector.writer.writer import Writer

__all__ = ["main"]

logger = logging.getLogger(__name__)
NICE = 5


async def main(spec: WriterSpec, channel: Channel, stop: asyncio.Event) -> int:
    dsn = spec.database_url
    with contextlib.suppress(OSError):
        os.nice(NICE)
    directory = Path(spec.journal_dir)
    lock = lock_file(directory / "writer.lock", "journal writer")
    metrics = WriterMetrics(CollectorRegistry(), connection=spec.connection)

    async def connect() -> asyncpg.Connection:
        # Named, so an operator (and the fault tests) can tell the writers' sessions apart.
        return await asyncpg.connect(
            dsn, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
            server_settings={"application_name": f"collector writer {spec.connection}"},
        )  # fmt: skip

    writer = Writer(
        directory,
        connection=spec.connection,
        connect=connect,
        metrics=metrics,
        options=spec.options,
    )
    drain = asyncio.Event()

    async def control() -> None:
        while (message := await channel.receive()) is not None:
            match message:
                case Drain():
                    logger.info("draining the journal into the database")
                    drain.set()
                case Stop():
                    return

    run = asyncio.create_task(writer.run(drain), name="writer")
    others = [asyncio.create_task(control(), name="control"), asyncio.create_task(stop.wait(), name="signal")]
    try:
        done, _ = await asyncio.wait([run, *others], return_when=asyncio.FIRST_COMPLETED)
        if run in done:
            run.result()
            logger.info("everything in the journal is committed (position %d)", writer.committed)
    finally:
        for task in (run, *others):
            task.cancel()
        # The writer aborts its database socket when cancelled; never wait on it unbounded.
        await asyncio.wait([run, *others], timeout=5.0)
        os.close(lock)
    return 0


if __name__ == "__main__":
    import sys

    run_child(f"writer {sys.argv[-1]}", WriterSpec, main)
