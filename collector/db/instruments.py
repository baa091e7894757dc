"""Load Upstox's instrument master (gzipped JSON) into the ``instruments`` table.

The master is refreshed by Upstox around 06:00 IST and occasionally during
the day. Rows are upserted per (instrument_key, trading_day): each day keeps
its own copy of a contract's metadata, because exchange tokens are reused for
other contracts after expiry.

The rules a master must meet live in :mod:`collector.core.master` (no I/O); this
module fetches it, stores it in one transaction and applies the
truncated-master guard there: a held day is stored with
``instrument_masters.status = 'held'`` and ``instruments_current`` stays on
the last accepted day.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from collector.core.master import (
    COLUMNS,
    MAX_BYTES,
    REJECT_REASONS,
    MasterRejected,
    MasterStatus,
    ParsedMaster,
    display,
    judge,
    parse_master,
)
from collector.core.times import ist_day
from collector.exceptions import MasterUnreachable, unreachable_reason

if TYPE_CHECKING:
    from collector.metrics import SupervisorMetrics

__all__ = [
    "MasterLoad",
    "MasterRejected",
    "display",
    "fetch_master",
    "load_master",
    "publish_master",
    "read_master",
    "store_master",
    "sync_master",
]

logger = logging.getLogger(__name__)

_LOCK_ID = 0x696E7374  # "inst": one master load at a time per database


# -- reading ---------------------------------------------------------------------------


def fetch_master(source: str, *, timeout_s: float = 60.0) -> bytes:
    """Read the master from an http(s) URL, a file:// URL or a local path (blocking).

    Network trouble and 5xx answers raise :class:`MasterUnreachable` (an
    OSError: worth retrying), naming the URL; a 4xx answer or a file that
    cannot be read raises :class:`MasterRejected`.
    """
    name = display(source)
    if source.startswith(("http://", "https://")):
        context = ssl.create_default_context() if source.startswith("https://") else None
        try:
            with urllib.request.urlopen(source, timeout=timeout_s, context=context) as response:
                data: bytes = response.read(MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:
                raise MasterRejected(name, f"answered HTTP {exc.code}", reason="unreadable") from None
            raise MasterUnreachable(f"{name}: answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:  # DNS, refused, TLS: the reason is what failed
            raise MasterUnreachable(f"{name}: {unreachable_reason(exc.reason)}") from None
        except OSError as exc:  # a timeout or a reset while reading
            raise MasterUnreachable(f"{name}: {unreachable_reason(exc)}") from None
    else:
        path = Path(source.removeprefix("file://"))
        try:
            with path.open("rb") as f:  # bounded: /dev/zero or a FIFO must not eat the memory
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise MasterRejected(name, f"cannot read it: {exc.strerror}", reason="unreadable") from None
    if len(data) > MAX_BYTES:
        raise MasterRejected(name, f"larger than {MAX_BYTES} bytes: not a master", reason="unreadable")
    return data


def read_master(source: str, *, force: bool = False) -> ParsedMaster:
    """Fetch, parse and check a master (blocking); raises :class:`MasterRejected`."""
    parsed = parse_master(fetch_master(source), source)
    parsed.check(force=force)
    return parsed


# -- storing and the guard ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasterLoad:
    """What one load stored, and whether its day is current."""

    source: str
    day: date
    status: MasterStatus
    stored: int  # usable rows of this file
    day_rows: int  # rows stored for the day, this and earlier loads of the same day
    reference_day: date | None
    reference_rows: int | None
    min_ratio: float
    skipped: str = ""  # ParsedMaster.summary()
    skipped_rows: int = 0

    @property
    def current(self) -> bool:
        return self.status != "held"

    def describe(self) -> str:
        """One line for the log or the terminal."""
        tail = f"; {self.skipped}" if self.skipped else ""
        if not self.current:
            return (
                f"instrument master held back: {self.day} has {_rows(self.day_rows)} (from {self.source}), "
                f"fewer than {self.min_ratio:.0%} of the {_rows(self.reference_rows or 0)} of "
                f"{self.reference_day} (COLLECTOR_INSTRUMENTS_MIN_RATIO); stored but not current: the "
                f"master of {self.reference_day} stays in force; `collector instruments sync --force` "
                f"accepts it{tail}"
            )
        day = f" ({_rows(self.day_rows)} for the day)" if self.day_rows != self.stored else ""
        how = ", accepted with --force" if self.status == "forced" else ""
        return f"stored {_rows(self.stored)} for {self.day}{day}, current{how}{tail}"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


async def store_master(
    conn: asyncpg.Connection,
    master: ParsedMaster,
    *,
    day: date | None = None,
    min_ratio: float,
    force: bool = False,
) -> MasterLoad:
    """Upsert the master's rows for ``day`` (today, IST, by default) and judge the day.

    One transaction: the rows, the day's ``instrument_masters`` row and so
    which day ``instruments_current`` shows change together or not at all.
    """
    now = datetime.now(UTC)
    day = day or ist_day(now)
    cols = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "updated_at"))
    async with conn.transaction():
        # Loads one at a time: the guard compares counts that a concurrent load would change.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            f"CREATE TEMP TABLE instruments_load ON COMMIT DROP AS SELECT {cols} FROM instruments WITH NO DATA"
        )
        await conn.copy_records_to_table("instruments_load", records=master.records, columns=COLUMNS)
        await conn.execute(
            f"INSERT INTO instruments (trading_day, {cols}, updated_at) "
            f"SELECT $1::date, {cols}, $2::timestamptz FROM instruments_load "
            f"ON CONFLICT (instrument_key, trading_day) DO UPDATE SET {updates}",
            day,
            now,
        )
        day_rows: int = await conn.fetchval("SELECT count(*) FROM instruments WHERE trading_day = $1", day)
        before = await conn.fetchval("SELECT status FROM instrument_masters WHERE trading_day = $1", day)
        ref = await conn.fetchrow(
            "SELECT trading_day, row_count FROM instrument_masters "
            "WHERE status <> 'held' AND trading_day < $1 ORDER BY trading_day DESC LIMIT 1",
            day,
        )
        ref_day, ref_rows = (ref["trading_day"], ref["row_count"]) if ref else (None, None)
        status = judge(before, day_rows, ref_rows, min_ratio=min_ratio, force=force)
        await conn.execute(
            "INSERT INTO instrument_masters (trading_day, status, row_count, reference_day, reference_rows, "
            "skipped_rows, loaded_at, accepted_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (trading_day) DO UPDATE SET status = excluded.status, "
            "row_count = excluded.row_count, reference_day = excluded.reference_day, "
            "reference_rows = excluded.reference_rows, skipped_rows = excluded.skipped_rows, "
            "loaded_at = excluded.loaded_at, "
            "accepted_at = coalesce(instrument_masters.accepted_at, excluded.accepted_at)",
            day, status, day_rows, ref_day, ref_rows, master.skipped_rows, now,
            None if status == "held" else now,
        )  # fmt: skip
    return MasterLoad(
        source=master.source,
        day=day,
        status=status,
        stored=len(master.records),
        day_rows=day_rows,
        reference_day=ref_day,
        reference_rows=ref_rows,
        min_ratio=min_ratio,
        skipped=master.summary(),
        skipped_rows=master.skipped_rows,
    )


async def load_master(
    conn: asyncpg.Connection, source: str, *, min_ratio: float, force: bool = False
) -> MasterLoad:
    """Fetch, check and store the master; raises :class:`MasterRejected` and stores nothing if refused."""
    # In a thread: a large master takes seconds to parse, and the supervisor's loop must go on.
    master = await asyncio.to_thread(read_master, source, force=force)
    return await store_master(conn, master, min_ratio=min_ratio, force=force)


# -- the supervisor's view ---------------------------------------------------------------


async def sync_master(
    conn: asyncpg.Connection, source: str, *, min_ratio: float, metrics: SupervisorMetrics
) -> MasterLoad | None:
    """The supervisor's load: one log line whatever happens; refusals set the metric.

    A refused master is logged and counted, not raised: the master in force
    stays, and so does the universe resolved from it. Other errors (network,
    database) are raised for the job to retry.
    """
    try:
        load = await load_master(conn, source, min_ratio=min_ratio)
    except MasterRejected as exc:
        logger.error("instrument master refused; the master in force (if any) stays: %s", exc)
        for reason in REJECT_REASONS:
            metrics.master_rejected.labels(reason).set(1 if reason == exc.reason else 0)
        return None
    for reason in REJECT_REASONS:
        metrics.master_rejected.labels(reason).set(0)
    metrics.master_skipped.set(load.skipped_rows)
    if load.current:
        (logger.warning if load.skipped else logger.info)("instrument master: %s", load.describe())
    else:
        logger.error("%s", load.describe())
    return load


async def publish_master(conn: asyncpg.Connection, metrics: SupervisorMetrics, *, current_rows: int) -> None:
    """Export the master in force, when it was loaded, and whether a newer day is held back.

    Read from the database, so a restart reports the sync that loaded the master in
    force instead of "never" (the gauge's 0, shown as 56.9 years ago).
    """
    row = await conn.fetchrow(
        "SELECT (SELECT loaded_at FROM instrument_masters WHERE status <> 'held' "
        "        ORDER BY trading_day DESC LIMIT 1) AS loaded_at, "
        "EXISTS (SELECT FROM instrument_masters WHERE status = 'held' AND trading_day > "
        "coalesce((SELECT max(trading_day) FROM instrument_masters WHERE status <> 'held'), '-infinity')) AS held"
    )
    metrics.master_rows.set(current_rows)
    metrics.master_rejected.labels("held").set(1 if row["held"] else 0)
    if row["loaded_at"] is not None:
        metrics.job_last_success.labels("instrument_sync").set(row["loaded_at"].timestamp())
