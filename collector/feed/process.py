"""The feed process of one connection: socket in, journal out, nothing else.

Started by the supervisor as ``python -m collector.feed.process``. It holds
no secret: the supervisor authorizes on its behalf (one REST rate limiter and
one token for the whole collector) and hands back the one-time socket URL.
It asks with :class:`~collector.ipc.messages.Authorize` and reports each
subscription (:class:`~collector.ipc.messages.Connected`), the end of each
(``Disconnected``) and what Upstox says of the market (``MarketInfo``); the supervisor
answers (``Authorized``, ``AuthorizeFailed``), moves it to new keys
(``Keys``), gives it the market calendar (``NewCalendar``) and stops it
(``Stop``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from collector.core.market import MarketState
from collector.core.shards import Shard
from collector.feed.connection import FeedConnection
from collector.ipc import messages
from collector.ipc.channel import Channel
from collector.ipc.child import run_child
from collector.journal.appender import JournalAppender
from collector.journal.reader import last_record_time
from collector.metrics import FeedMetrics

__all__ = ["main"]

logger = logging.getLogger(__name__)


class _Authorizer:
    """Asks the supervisor for a socket URL; one request at a time."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._waiting: asyncio.Future[messages.Authorized | messages.AuthorizeFailed] | None = None

    async def __call__(self) -> str:
        self._waiting = asyncio.get_running_loop().create_future()
        await self._channel.send(messages.Authorize())
        match await self._waiting:
            case messages.Authorized(uri=uri):
                return uri
            case messages.AuthorizeFailed() as failed:
                raise failed.error()

    def answer(self, message: messages.Authorized | messages.AuthorizeFailed) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(message)


async def main(spec: messages.FeedSpec, channel: Channel, stop: asyncio.Event) -> int:
    metrics = FeedMetrics(CollectorRegistry(), connection=spec.connection)
    authorizer = _Authorizer(channel)
    with JournalAppender(Path(spec.journal_dir), spec.journal) as journal:
        last = last_record_time(Path(spec.journal_dir))
        notices: set[asyncio.Task[None]] = set()

        def notify(message: messages.Connected | messages.Disconnected | messages.MarketInfo) -> None:
            task = asyncio.create_task(channel.send(message))
            notices.add(task)
            task.add_done_callback(notices.discard)

        feed = FeedConnection(
            Shard(spec.connection, {k: v for k, v in spec.keys.items() if v}),
            authorize=authorizer,
            journal=journal,
            market=MarketState(),
            metrics=metrics,
            options=spec.options,
            calendar=spec.calendar,
            down_since=last or spec.since,
            # The supervisor runs the backfill after a reconnect (the gap rows follow shortly).
            on_connected=lambda at: notify(messages.Connected(at)),
            # Whether the market is open is the supervisor's to say (it knows when nobody hears Upstox).
            on_disconnected=lambda at: notify(messages.Disconnected(at)),
            on_market=lambda statuses, at: notify(messages.MarketInfo(statuses, at)),
        )

        async def control() -> None:
            while (message := await channel.receive()) is not None:
                match message:
                    case messages.Stop():
                        return
                    case messages.Authorized() | messages.AuthorizeFailed():
                        authorizer.answer(message)
                    case messages.Keys(keys=keys):
                        await feed.set_keys(keys)
                    case messages.NewCalendar(calendar=calendar):
                        feed.calendar = calendar

        tasks = [
            asyncio.create_task(feed.run(), name="feed"),
            asyncio.create_task(journal.sync_forever(), name="fsync"),
            asyncio.create_task(control(), name="control"),
            asyncio.create_task(stop.wait(), name="signal"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a crash ends the process; the supervisor restarts it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    logger.info("stopped at journal position %d (%s)", journal.position, datetime.now(UTC).isoformat())
    return 0


if __name__ == "__main__":
    import sys

    run_child(f"feed {sys.argv[-1]}", messages.FeedSpec, main)
