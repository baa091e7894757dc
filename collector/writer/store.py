"""Write one batch into TimescaleDB, exactly once.

A batch is the rows decoded from one stretch of a journal, ``start`` to
``end``. It commits in one transaction that first moves the journal's row in
``journal_positions`` from ``start`` to ``end``: if the position is not at
``start`` (the batch, or a later one, is already in: a commit whose outcome
was unknown did happen) nothing is written and :class:`PositionConflict` tells
the writer to reload. The row lock also fences off a second writer of the same
journal. Rows the database rejects for good (data errors, class 22 and 23) are
isolated by bisection inside savepoints and stored in ``dead_letters`` with
the reason; the rest commits. Metrics count rows only once committed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from collector.core.batch import Batch
from collector.core.pgcopy import BAR_TYPES, HEADER, TRAILER, decode_row, tick_from_row
from collector.core.records import BAR_COLUMNS, TICK_COLUMNS, Bar
from collector.core.times import EPOCH
from collector.db.connect import DATA_ERRORS
from collector.exceptions import PositionConflict
from collector.metrics import Table, WriterMetrics

__all__ = ["BatchStore"]

logger = logging.getLogger(__name__)

_ADVANCE_SQL = """
UPDATE journal_positions
SET position = $3, state = $4, dirty_since = least(dirty_since, $5), updated_at = now()
WHERE journal = $1 AND position = $2
RETURNING true
"""
# Bars are upserted from a session's temporary table filled by binary COPY: asyncpg's
# encoding of the nine unnest() arrays checked every element against an ABC, and
# was half of the client's work per batch (0.75 of 1.64 ms for 150 bars).
_BARS_STAGE = "exchange_bars_in"
_BARS_STAGE_SQL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_BARS_STAGE}
(LIKE exchange_bars INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""
_BARS_SQL = f"""
WITH staged AS (DELETE FROM {_BARS_STAGE} RETURNING *)
INSERT INTO exchange_bars AS b (instrument_key, interval, bar_start, open, high, low, close, volume, updated_at)
SELECT instrument_key, interval, bar_start, open, high, low, close, volume, updated_at FROM staged
ON CONFLICT (instrument_key, interval, bar_start) DO UPDATE
SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, updated_at = excluded.updated_at
WHERE b.updated_at <= excluded.updated_at
"""
# One statement per table, never executemany: a task cancelled inside asyncpg's
# pipelined executemany can wait forever (MagicStack/asyncpg#873), which once
# made shutdown hang. unnest() takes whole columns as arrays instead.
_STATUS_SQL = """
INSERT INTO market_status (segment, session, status, time, received_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
ON CONFLICT DO NOTHING
"""
_SESSION_SQL = """
INSERT INTO feed_sessions (connection, connected_at, disconnected_at, close_reason)
SELECT * FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[], $4::text[])
ON CONFLICT DO NOTHING
"""
_GAP_SQL = (  # text[] columns cannot travel through unnest(); gaps are few
    "INSERT INTO feed_gaps (connection, started_at, ended_at, segments, reason, instruments) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)
_DEAD_SQL = """
INSERT INTO dead_letters (table_name, reason, row_data, journal, position)
SELECT t, r, d::jsonb, j, p FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) AS u(t, r, d, j, p)
"""


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


_CHUNK_BYTES = 1 << 20


async def _chunks(rows: Sequence[bytes]) -> AsyncIterator[bytes]:
    """A binary COPY stream of ``rows`` in pieces of about a megabyte."""
    chunk = [HEADER]
    size = 0
    for row in rows:
        chunk.append(row)
        size += len(row)
        if size >= _CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    chunk.append(TRAILER)
    yield b"".join(chunk)


def _record(table: str, row: Any) -> Any:
    """A row as a named tuple (tick and bar rows are binary COPY bytes)."""
    if not isinstance(row, bytes):
        return row
    return tick_from_row(row) if table == "ticks" else Bar._make(decode_row(BAR_TYPES, row))


class BatchStore:
    """Commits batches with COPY and upserts; one instance per writer."""

    def __init__(self, metrics: WriterMetrics) -> None:
        self._metrics = metrics

    @staticmethod
    async def load(
        conn: asyncpg.Connection, journal: str, connection: int, oldest: int
    ) -> tuple[int, bytes | None]:
        """The committed (position, state) of ``journal``; registers it at ``oldest`` if new.

        Called at the start of each database session: it also makes the session's
        staging table for bars.
        """
        await conn.execute(_BARS_STAGE_SQL)
        row = await conn.fetchrow("SELECT position, state FROM journal_positions WHERE journal = $1", journal)
        if row is not None:
            return int(row["position"]), row["state"]
        await conn.execute(
            "INSERT INTO journal_positions (journal, connection, position) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            journal,
            connection,
            oldest,
        )
        row = await conn.fetchrow("SELECT position, state FROM journal_positions WHERE journal = $1", journal)
        return int(row["position"]), row["state"]

    async def write(self, conn: asyncpg.Connection, batch: Batch) -> None:
        """Commit a batch and its journal position in one transaction."""
        started = time.monotonic()
        try:
            await self._transaction(conn, batch, salvage=False)
        except DATA_ERRORS as exc:
            logger.warning("batch %d..%d rejected (%s); isolating the bad rows", batch.start, batch.end, exc)
            self._metrics.write_failures.labels("permanent").inc()
            await self._transaction(conn, batch, salvage=True)
        self._metrics.copy_seconds.observe(time.monotonic() - started)

    async def _transaction(self, conn: asyncpg.Connection, batch: Batch, *, salvage: bool) -> None:
        written: dict[Table, int] = {}
        dead_total = 0
        first_time = (
            None if batch.oldest_tick_us is None else EPOCH + timedelta(microseconds=batch.oldest_tick_us)
        )
        async with conn.transaction():
            moved = await conn.fetchval(
                _ADVANCE_SQL, batch.journal, batch.start, batch.end, batch.state or None, first_time
            )
            if not moved:
                raise PositionConflict(f"journal {batch.journal} is no longer at {batch.start}")
            steps: list[tuple[Table, Sequence[Any], Callable[[Sequence[Any]], Awaitable[None]]]] = [
                ("ticks", batch.ticks, lambda rows: self._copy_ticks(conn, rows)),
                ("exchange_bars", batch.bars, lambda rows: self._upsert_bars(conn, rows)),
                ("market_status", batch.statuses, lambda rows: self._columns(conn, _STATUS_SQL, rows)),
                ("feed_sessions", batch.sessions, lambda rows: self._columns(conn, _SESSION_SQL, rows)),
                ("feed_gaps", batch.gaps, lambda rows: self._each(conn, _GAP_SQL, rows)),
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
            if batch.rejects:
                await self._columns(
                    conn,
                    _DEAD_SQL,
                    [(t, reason, row, batch.journal, batch.start) for t, reason, row in batch.rejects],
                )
                dead_total += len(batch.rejects)
        # Counted only once committed: a cancelled or failed commit counts nothing.
        for table, n in written.items():
            self._metrics.rows.labels(table).inc(n)
        if dead_total:
            self._metrics.dead_letters.inc(dead_total)

    async def _copy_ticks(self, conn: asyncpg.Connection, rows: Sequence[bytes]) -> None:
        # The rows are binary COPY already (collector.pgcopy): sent in chunks, so
        # a batch is never copied whole into one more buffer.
        await conn.copy_to_table("ticks", source=_chunks(rows), columns=TICK_COLUMNS, format="binary")

    async def _upsert_bars(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> None:
        stream = b"".join((HEADER, *rows, TRAILER))
        await conn.copy_to_table(_BARS_STAGE, source=memoryview(stream), columns=BAR_COLUMNS, format="binary")
        await conn.execute(_BARS_SQL)  # empties the stage too

    @staticmethod
    async def _columns(conn: asyncpg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run an unnest() statement with the rows turned into column arrays."""
        await conn.execute(sql, *(list(col) for col in zip(*rows, strict=True)))

    @staticmethod
    async def _each(conn: asyncpg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            await conn.execute(sql, *row)

    async def _salvage(
        self, conn: asyncpg.Connection, rows: Sequence[Any], write: Callable[[Sequence[Any]], Awaitable[None]]
    ) -> list[tuple[Any, str]]:
        """Write what the database accepts; return the rejected rows with reasons."""
        try:
            async with conn.transaction():  # a savepoint
                await write(rows)
            return []
        except DATA_ERRORS as exc:
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
                json.dumps({k: _jsonable(v) for k, v in _record(table, row)._asdict().items()}),
                batch.journal,
                batch.start,
            )
            for row, reason in dead
        ]
        await self._columns(conn, _DEAD_SQL, records)
        logger.error("%d %s rows dead-lettered, e.g. %s", len(dead), table, dead[0][1])
