"""BatchStore on a real TimescaleDB: the position fence, and dead letters for rejected rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.core.batch import Batch
from collector.core.decode import decode_frame
from collector.core.pgcopy import tick_row
from collector.core.records import FeedSession, Gap, StatusChange, Tick
from collector.exceptions import PositionConflict
from collector.metrics import WriterMetrics
from collector.writer.store import BatchStore
from tests.support.db import connection
from tests.support.metrics import sample
from tests.support.pipeline import sim_frames

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ticks() -> list[Tick]:
    return decode_frame(sim_frames(1)[0], datetime.now(UTC)).ticks


def tick_batch(ticks: list[Tick], **kwargs: Any) -> Batch:
    """A batch of ``ticks`` as the writer makes one: rows in the binary COPY format."""
    oldest = min(((t.time - EPOCH) // timedelta(microseconds=1) for t in ticks), default=None)
    return Batch(ticks=[tick_row(t) for t in ticks], oldest_tick_us=oldest, **kwargs)


async def test_a_batch_commits_once_whatever_the_retries(migrated: str) -> None:
    store = BatchStore(WriterMetrics(CollectorRegistry()))
    async with connection(migrated) as conn:
        assert await store.load(conn, "j1", 0, 0) == (0, None)
        sent = ticks()
        batch = tick_batch(sent, journal="j1", start=0, end=500, state=b'{"ticks": {}}')
        await store.write(conn, batch)
        # A retry after an ambiguous failure: the journal is no longer at 0.
        with pytest.raises(PositionConflict):
            await store.write(conn, batch)
        assert await conn.fetchval("SELECT count(*) FROM ticks") == len(batch.ticks)
        assert await store.load(conn, "j1", 0, 0) == (500, b'{"ticks": {}}')
        # The next batch goes on from where the first ended; the oldest tick marks candles dirty.
        await store.write(conn, Batch(journal="j1", start=500, end=600))
        assert await conn.fetchval("SELECT position FROM journal_positions WHERE journal = 'j1'") == 600
        assert await conn.fetchval("SELECT dirty_since FROM journal_positions") == min(t.time for t in sent)


async def test_every_kind_of_row_is_stored_in_one_transaction(migrated: str) -> None:
    now = datetime.now(UTC)
    batch = tick_batch(
        ticks(),
        statuses=[StatusChange("NSE_FO", "normal", "NORMAL_OPEN", now, now)],
        sessions=[FeedSession(0, now, now, "code 1006")],
        gaps=[Gap(0, now, now, ["NSE_FO"], "reconnect", ["NSE_FO|1", "NSE_FO|2"])],
        rejects=[("frames", "not a FeedResponse", '{"frame_hex": "ff"}')],
        journal="j",
        start=0,
        end=10,
    )
    registry = CollectorRegistry()
    async with connection(migrated) as conn:
        await BatchStore.load(conn, "j", 0, 0)
        await BatchStore(WriterMetrics(registry)).write(conn, batch)
        assert await conn.fetchval("SELECT count(*) FROM market_status") == 1
        assert await conn.fetchval("SELECT close_reason FROM feed_sessions") == "code 1006"
        assert await conn.fetchval("SELECT instruments FROM feed_gaps") == ["NSE_FO|1", "NSE_FO|2"]
        assert await conn.fetchval("SELECT table_name FROM dead_letters") == "frames"
    assert sample(registry, "collector_dead_letter_rows_total") == 1
    assert sample(registry, "collector_rows_written_total", {"table": "feed_gaps"}) == 1


async def test_rejected_rows_go_to_dead_letters_and_the_rest_is_stored(migrated: str) -> None:
    registry = CollectorRegistry()
    store = BatchStore(WriterMetrics(registry))
    good = ticks()
    bad = good[0]._replace(instrument_key="NSE_EQ|bad\x00key")  # PostgreSQL text cannot hold NUL
    batch = tick_batch([*good[:7], bad, *good[7:]], journal="j", start=0, end=99)
    async with connection(migrated) as conn:
        await store.load(conn, "j", 0, 0)
        await store.write(conn, batch)
        assert await conn.fetchval("SELECT count(*) FROM ticks") == len(good)
        dead = await conn.fetch("SELECT * FROM dead_letters")
        assert await conn.fetchval("SELECT position FROM journal_positions") == 99
    assert len(dead) == 1
    assert dead[0]["table_name"] == "ticks" and dead[0]["journal"] == "j" and dead[0]["position"] == 0
    assert dead[0]["reason"].startswith("CharacterNotInRepertoireError") and "0x00" in dead[0]["reason"]
    assert sample(registry, "collector_dead_letter_rows_total") == 1
