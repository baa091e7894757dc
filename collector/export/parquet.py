"""One table's rows of one IST trading day into one Parquet file, in bounded memory.

The rows stream from a server-side cursor in batches of :data:`FETCH_ROWS`,
become Arrow record batches, and are written as row groups of about
:data:`ROW_GROUP_ROWS` rows, compressed with zstd. Memory holds one fetch and
one row group, whatever the day's size.

Types are the table's own, read from the query's description (asyncpg's
prepared statement): ``timestamptz`` is ``timestamp[us, tz=UTC]`` (decoded as
integers, microseconds being PostgreSQL's own precision, so nothing is
rounded), ``float8`` ``double``, ``int8`` ``int64``, ``int4`` ``int32``,
``text`` ``string``, ``boolean`` ``bool``, ``date`` ``date32``, ``jsonb``
a JSON ``string``, and arrays lists of those (depth prices ``list<double>``,
quantities ``list<int64>``). NULL stays null: a column a tick's mode does not
carry is null in Parquet too. Columns declared ``NOT NULL`` are non-nullable
fields.

A file is written under a temporary name in its folder, flushed to disk and
renamed: a reader (or an export killed midway) never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "FETCH_ROWS", "ROW_GROUP_ROWS", "TABLES", "Table", "arrow_schema", "arrow_type", "export_day",
    "stale_temporaries", "use_integer_timestamps", "written_at",
]  # fmt: skip

FETCH_ROWS = 20_000
ROW_GROUP_ROWS = 100_000
# PostgreSQL counts timestamps from 2000-01-01; Arrow from 1970-01-01.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000


@dataclass(frozen=True, slots=True)
class Table:
    """What one exported table is: which relation, which column says the day, in which order."""

    name: str
    day_column: str
    order: str


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("ticks", "time", "time, instrument_key, received_at"),
        Table("candles_1m_complete", "bucket", "bucket, instrument_key"),
        Table("exchange_bars", "bar_start", "bar_start, instrument_key, interval"),
        Table("market_status", "time", "time, segment, session"),
        Table("feed_gaps", "started_at", "started_at, connection"),
    )
}

_SCALARS: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "name": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


def arrow_type(pg_type: str) -> pa.DataType:
    """The Arrow type of a PostgreSQL type name (``float8[]`` is a list of double)."""
    if pg_type.endswith("[]"):
        return pa.list_(arrow_type(pg_type[:-2]))
    try:
        return _SCALARS[pg_type]
    except KeyError:
        raise TypeError(f"no Parquet type for PostgreSQL's {pg_type}") from None


async def arrow_schema(conn: asyncpg.Connection, table: Table) -> pa.Schema:
    """The relation's columns as Arrow fields; NOT NULL columns of a table are not nullable."""
    stmt = await conn.prepare(f"SELECT * FROM {table.name} LIMIT 0")
    required = {
        r["attname"]
        for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnotnull AND attnum > 0",
            table.name,
        )
    }
    return pa.schema(
        [
            pa.field(a.name, arrow_type(a.type.name), nullable=a.name not in required)
            for a in stmt.get_attributes()
        ]
    )


def _column(values: tuple[Any, ...], field: pa.Field) -> pa.Array:
    if pa.types.is_timestamp(field.type):  # integers since 2000-01-01 (the connection's codec)
        since_2000 = pa.array(values, type=pa.int64())
        return pc.add(since_2000, _PG_EPOCH_US).cast(field.type)
    return pa.array(values, type=field.type)


def _batch(rows: list[Any], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [_column(c, f) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


async def use_integer_timestamps(conn: asyncpg.Connection) -> None:
    """Decode ``timestamptz`` as PostgreSQL's microseconds since 2000: no datetime objects, nothing rounded."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_ts, decoder=_decode_ts, format="tuple"
    )


def _encode_ts(value: Any) -> tuple[int]:
    return (_pg_us(value) if isinstance(value, datetime) else int(value),)


def _decode_ts(value: tuple[int]) -> int:
    return value[0]


async def export_day(
    conn: asyncpg.Connection,
    table: Table,
    start: datetime,
    end: datetime,
    path: Path,
    *,
    on_rows: Callable[[int], None] = lambda n: None,
) -> int:
    """Write the rows of ``table`` whose day column is in ``[start, end)`` to ``path``; returns the rows.

    No file is made when there are none. ``conn`` decodes timestamps as integers
    (:func:`use_integer_timestamps`).
    """
    schema = await arrow_schema(conn, table)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = 0
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    lo, hi = _pg_us(start), _pg_us(end)
    query = (
        f"SELECT * FROM {table.name} WHERE {table.day_column} >= $1 AND {table.day_column} < $2 "
        f"ORDER BY {table.order}"
    )
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(query, lo, hi)
            while batch := await cursor.fetch(FETCH_ROWS):
                if writer is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(temporary, schema, compression="zstd")
                pending.append(_batch(batch, schema))
                pending_rows += len(batch)
                rows += len(batch)
                on_rows(len(batch))
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=pending_rows)
                    pending, pending_rows = [], 0
        if writer is None:
            return 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending), row_group_size=pending_rows)
        writer.close()
        writer = None
        _durable_rename(temporary, path)
        return rows
    finally:
        if writer is not None:
            writer.close()
        if temporary.exists():
            temporary.unlink()


def _pg_us(t: datetime) -> int:
    """Microseconds since 2000-01-01 UTC, exactly."""
    return (t - _PG_EPOCH) // timedelta(microseconds=1)


def _durable_rename(temporary: Path, path: Path) -> None:
    """Make the file's bytes durable, then its name."""
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files an interrupted export left in ``folder``."""
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def written_at(path: Path) -> float | None:
    """When a file was completed (its modification time), None when it does not exist."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
