"""BatchStore on a real TimescaleDB: exactly once, and dead letters for rejected rows."""

from __future__ import annotations

import uuid

import asyncpg
from prometheus_client import CollectorRegistry

from collector.batch import Batch
from collector.metrics import Metrics
from collector.sink.store import BatchStore
from tests.helpers import sample
from tests.test_writer import frames


async def test_a_batch_is_stored_once_whatever_the_retries(migrated: str) -> None:
    store = BatchStore(Metrics(CollectorRegistry()))
    batch = Batch(uuid.uuid4(), ticks=frames(1)[0].ticks)
    conn = await asyncpg.connect(migrated)
    try:
        assert await store.write(conn, batch) is True
        # A retry after an ambiguous failure (or a spool replay) of the same batch:
        assert await store.write(conn, batch) is False
        assert await conn.fetchval("SELECT count(*) FROM ticks") == len(batch.ticks)
        assert await conn.fetchval("SELECT rows FROM ingest_ledger WHERE batch_id = $1", batch.batch_id)
    finally:
        await conn.close()


async def test_rejected_rows_go_to_dead_letters_and_the_rest_is_stored(migrated: str) -> None:
    registry = CollectorRegistry()
    store = BatchStore(Metrics(registry))
    good = frames(1)[0].ticks
    bad = good[0]._replace(instrument_key="NSE_EQ|bad\x00key")  # PostgreSQL text cannot hold NUL
    batch = Batch(uuid.uuid4(), ticks=[*good[:7], bad, *good[7:]])
    conn = await asyncpg.connect(migrated)
    try:
        assert await store.write(conn, batch) is True
        assert await conn.fetchval("SELECT count(*) FROM ticks") == len(good)
        dead = await conn.fetch("SELECT * FROM dead_letters")
    finally:
        await conn.close()
    assert len(dead) == 1
    assert dead[0]["table_name"] == "ticks" and dead[0]["batch_id"] == batch.batch_id
    assert dead[0]["reason"].startswith("CharacterNotInRepertoireError") and "0x00" in dead[0]["reason"]
    assert sample(registry, "collector_dead_letter_rows_total") == 1
