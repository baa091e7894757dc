"""Load Upstox's instrument master (gzipped JSON) into the ``instruments`` table.

The master is refreshed by Upstox around 06:00 IST and occasionally during
the day. Rows are upserted per (instrument_key, trading_day): each day keeps
its own copy of a contract's metadata, because exchange tokens are reused for
other contracts after expiry.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import ssl
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from collector.exceptions import ConfigError
from collector.sequencer import trading_day

__all__ = ["COLUMNS", "fetch_master", "load_master", "parse_master", "store_master"]

logger = logging.getLogger(__name__)

COLUMNS = (
    "instrument_key", "segment", "exchange", "name", "trading_symbol", "short_name", "instrument_type",
    "isin", "exchange_token", "lot_size", "minimum_lot", "freeze_quantity", "tick_size", "expiry",
    "strike_price", "weekly", "underlying_symbol", "underlying_key", "underlying_type", "asset_symbol",
    "asset_key", "asset_type",
)  # fmt: skip
_INT = {"lot_size", "minimum_lot"}
_FLOAT = {"freeze_quantity", "tick_size", "strike_price"}


def fetch_master(source: str, *, timeout_s: float = 60.0) -> bytes:
    """Read the master from an http(s) URL, a file:// URL or a local path (blocking)."""
    if source.startswith(("http://", "https://")):
        context = ssl.create_default_context() if source.startswith("https://") else None
        with urllib.request.urlopen(source, timeout=timeout_s, context=context) as response:
            data: bytes = response.read()
            return data
    path = Path(source.removeprefix("file://"))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("COLLECTOR_INSTRUMENTS_URL", f"cannot read {path}: {exc.strerror}") from None


def parse_master(data: bytes) -> list[dict[str, Any]]:
    """Decode gzipped (or plain) JSON into a list of instrument rows."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    rows = json.loads(data)
    if not isinstance(rows, list):
        raise ValueError("the instrument master is not a JSON list")
    return [r for r in rows if isinstance(r, dict) and r.get("instrument_key") and r.get("segment")]


def _row(raw: dict[str, Any], day: date, now: datetime) -> tuple[Any, ...]:
    out: list[Any] = [day]
    for col in COLUMNS:
        value = raw.get(col)
        if value is not None:
            if col == "expiry":
                value = datetime.fromtimestamp(int(value) / 1000, UTC)
            elif col in _INT:
                value = int(value)
            elif col in _FLOAT:
                value = float(value)
            elif col == "weekly":
                value = bool(value)
            else:
                value = str(value)
        out.append(value)
    out.append(now)
    return tuple(out)


async def store_master(conn: asyncpg.Connection, rows: list[dict[str, Any]], day: date | None = None) -> int:
    """Upsert the master's rows for ``day`` (today, IST, by default)."""
    now = datetime.now(UTC)
    day = day or trading_day(now)
    records = [_row(r, day, now) for r in rows]
    cols = ("trading_day", *COLUMNS, "updated_at")
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "updated_at"))
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE instruments_load (LIKE instruments) ON COMMIT DROP")
        await conn.copy_records_to_table("instruments_load", records=records, columns=cols)
        await conn.execute(
            f"INSERT INTO instruments ({', '.join(cols)}) SELECT {', '.join(cols)} FROM instruments_load "
            f"ON CONFLICT (instrument_key, trading_day) DO UPDATE SET {updates}"
        )
    logger.info("instrument master: %d rows stored for %s", len(records), day)
    return len(records)


async def load_master(conn: asyncpg.Connection, source: str) -> list[dict[str, Any]]:
    """Fetch, parse and store the master; return its rows."""
    data = await asyncio.to_thread(fetch_master, source)
    rows = parse_master(data)
    await store_master(conn, rows)
    return rows
