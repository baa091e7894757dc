"""Write one batch into TimescaleDB, exactly once. The writer's sink.

A batch commits in one transaction together with its row in
``ingest_ledger``; a batch whose id is already there (a retry after an
ambiguous failure, or a spool replay) is skipped. Rows the database rejects
for good (data errors, class 22 and 23) are isolated by bisection inside
savepoints and stored in ``dead_letters`` with the reason; the rest commits.
Metrics count rows only once the transaction committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from collector.batch import Batch
from collector.metrics import Metrics
from collector.records import TICK_COLUMNS

__all__ = ["PERMANENT", "BatchStore"]

logger = logging.getLogger(__name__)

# Errors that say "this data is bad", not "the database is away": class 22
# (data exception) and 23 (integrity constraint violation).
PERMANENT = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

_BARS_SQL = """
INSERT INTO exchange_bars AS b (instrument_key, interval, bar_start, open, high, low, close, volume, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[],
                     $6::float8[], $7::float8[], $8::int8[], $9::timestamptz[])
ON CONFLICT (instrument_key, interval, bar_start) DO UPDATE
SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, updated_at = excluded.updated_at
WHERE b.updated_at <= excluded.updated_at
"""
_STATUS_SQL = (
    "INSERT INTO market_status (segment, session, status, time, received_at) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)
_SESSION_SQL = (
    "INSERT INTO feed_sessions (connection, connected_at, disconnected_at, close_reason) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
)
_GAP_SQL = (
    "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class BatchStore:
    """Writes batches with COPY and upserts; one instance per writer."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def write(self, conn: asyncpg.Connection, batch: Batch) -> bool:
        """Write a batch in one transaction; False when the ledger says it is already in."""
        try:
            return await self._transaction(conn, batch, salvage=False)
        except PERMANENT as exc:
            logger.warning("batch %s rejected (%s); isolating the bad rows", batch.batch_id, exc)
            self._metrics.write_failures.labels("permanent").inc()
            return await self._transaction(conn, batch, salvage=True)

    async def _transaction(self, conn: asyncpg.Connection, batch: Batch, *, salvage: bool) -> bool:
        written: dict[str, int] = {}
        dead_total = 0
        async with conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO ingest_ledger (batch_id, rows) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
                batch.batch_id,
                batch.rows,
            )
            if not fresh:
                return False
            steps: list[tuple[str, Sequence[Any], Callable[[Sequence[Any]], Awaitable[None]]]] = [
                ("ticks", batch.ticks, lambda rows: self._copy_ticks(conn, rows)),
                ("exchange_bars", batch.bars, lambda rows: self._upsert_bars(conn, rows)),
                ("market_status", batch.statuses, lambda rows: conn.executemany(_STATUS_SQL, rows)),
                ("feed_sessions", batch.sessions, lambda rows: conn.executemany(_SESSION_SQL, rows)),
                ("feed_gaps", batch.gaps, lambda rows: conn.executemany(_GAP_SQL, rows)),
            ]
            for table, rows, write in steps:
                if not rows:
                    continue
                if salvage:
                    dead = await self._salvage(conn, rows, write)
                    await self._dead_letter(conn, table, dead, batch)
                    dead_total += len(dead)
                    written[table] = len(rows) - len(dead)
                else:
                    await write(rows)
                    written[table] = len(rows)
        # Counted only once committed: a cancelled or failed commit counts nothing.
        for table, n in written.items():
            self._metrics.rows.labels(table).inc(n)
        if dead_total:
            self._metrics.dead_letters.inc(dead_total)
        return True

    async def _copy_ticks(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> None:
        await conn.copy_records_to_table("ticks", records=rows, columns=TICK_COLUMNS)

    async def _upsert_bars(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> None:
        await conn.execute(_BARS_SQL, *(list(col) for col in zip(*rows, strict=True)))

    async def _salvage(
        self, conn: asyncpg.Connection, rows: Sequence[Any], write: Callable[[Sequence[Any]], Awaitable[None]]
    ) -> list[tuple[Any, str]]:
        """Write what the database accepts; return the rejected rows with reasons."""
        try:
            async with conn.transaction():  # a savepoint
                await write(rows)
            return []
        except PERMANENT as exc:
            if len(rows) == 1:
                return [(rows[0], f"{type(exc).__name__}: {exc}")]
            mid = len(rows) // 2
            return await self._salvage(conn, rows[:mid], write) + await self._salvage(conn, rows[mid:], write)

    async def _dead_letter(
        self, conn: asyncpg.Connection, table: str, dead: list[tuple[Any, str]], batch: Batch
    ) -> None:
        if not dead:
            return
        records = [
            (
                table,
                reason[:1000],
                json.dumps({k: _jsonable(v) for k, v in row._asdict().items()}),
                batch.batch_id,
            )
            for row, reason in dead
        ]
        await conn.executemany(
            "INSERT INTO dead_letters (table_name, reason, row_data, batch_id) VALUES ($1, $2, $3::jsonb, $4)",
            records,
        )
        logger.error("%d %s rows dead-lettered, e.g. %s", len(dead), table, dead[0][1])
