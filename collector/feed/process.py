"""The feed process of one connection: socket in, journal out, nothing else.

Started by the supervisor as ``python -m collector.feed.process``. It holds
no secret: the supervisor authorizes on its behalf (one REST rate limiter and
one token for the whole collector) and hands back the one-time socket URL.
Messages from the supervisor: ``keys`` (a new shard), ``authorized`` /
``authorize_failed`` (answers), ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from collector.core.calendar import Calendar
from collector.core.market import MarketState
from collector.core.shards import Shard
from collector.exceptions import UPSTOX_REASONS, UpstoxError, UpstoxNetworkError
from collector.feed.connection import FeedConnection
from collector.ipc.channel import Channel
from collector.ipc.child import run_child
from collector.journal.appender import JournalAppender
from collector.journal.reader import last_record_time
from collector.metrics import FeedMetrics
from collector.options import FeedOptions, JournalOptions

__all__ = ["FeedSpec", "main"]

logger = logging.getLogger(__name__)


@dataclass
class FeedSpec:
    """What the supervisor tells a feed process."""

    connection: int
    keys: dict[str, list[str]]
    journal_dir: str
    options: dict[str, Any]  # FeedOptions fields
    journal: dict[str, Any]  # JournalOptions fields
    calendar: dict[str, Any] | None = None
    since: str | None = None  # last activity the database knows of, if the journal has none
    log_level: str = "INFO"
    metrics_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_ERRORS = {cls.reason: cls for cls in UpstoxError.__subclasses__()}
assert set(_ERRORS) == set(UPSTOX_REASONS)


class _Authorizer:
    """Asks the supervisor for a socket URL; one request at a time."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._waiting: asyncio.Future[dict[str, Any]] | None = None

    async def __call__(self) -> str:
        self._waiting = asyncio.get_running_loop().create_future()
        await self._channel.send({"op": "authorize"})
        answer = await self._waiting
        if answer["op"] == "authorized":
            return str(answer["uri"])
        error = _ERRORS.get(answer.get("reason", "network"), UpstoxNetworkError)
        raise error(answer.get("message", "authorize failed"), retry_after_s=answer.get("retry_after_s"))

    def answer(self, message: dict[str, Any]) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(message)


async def main(raw: dict[str, Any], channel: Channel, stop: asyncio.Event) -> int:
    spec = FeedSpec(**raw["feed"])
    metrics = FeedMetrics(CollectorRegistry(), connection=spec.connection)
    calendar = Calendar.from_json(spec.calendar) if spec.calendar is not None else None
    authorizer = _Authorizer(channel)
    with JournalAppender(Path(spec.journal_dir), JournalOptions(**spec.journal)) as journal:
        last = last_record_time(Path(spec.journal_dir))
        notices: list[asyncio.Task[None]] = []
        since = last or (datetime.fromisoformat(spec.since) if spec.since else None)
        feed = FeedConnection(
            Shard(spec.connection, {k: v for k, v in spec.keys.items() if v}),  # type: ignore[misc]
            authorize=authorizer,
            journal=journal,
            market=MarketState(),
            metrics=metrics,
            options=FeedOptions(**spec.options),
            calendar=calendar,
            down_since=since,
            # The supervisor runs the backfill after a reconnect (the gap rows follow shortly).
            on_connected=lambda at: notices.append(
                asyncio.create_task(channel.send({"op": "connected", "at": at.isoformat()}))
            ),
        )

        async def control() -> None:
            while (message := await channel.receive()) is not None:
                op = message["op"]
                if op == "stop":
                    return
                if op in ("authorized", "authorize_failed"):
                    authorizer.answer(message)
                elif op == "keys":
                    await feed.set_keys(message["keys"])
                elif op == "calendar":
                    feed.calendar = Calendar.from_json(message["calendar"])

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

    run_child(f"feed {sys.argv[-1]}", main)
