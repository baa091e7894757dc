"""``collector export``: recorded tables to Parquet, one file per table per IST trading day.

    OUT/table=ticks/day=2026-11-27/part-0.parquet

(a Hive-style layout: DuckDB, polars, pandas and Spark read ``table`` and
``day`` as columns of a folder they are given). A day is an IST calendar day,
00:00 to 24:00 IST, by each table's own time: a tick's trade time, a candle's
or bar's start, a status change's time, a gap's start. A table with no rows on
a day gets no file.

A rerun skips a (table, day) whose file exists and was written after the day
was over, so only finished days are skipped: today's file, written while the
collector still records, is written again. ``--redo`` rewrites every day of
the span. Temporary files an interrupted export left are removed first; run
one export per output folder at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from collector.core.span import FORMS, SpanError, day_bounds, days, ist_day, parse_instant
from collector.exceptions import UsageError
from collector.settings import Settings

__all__ = ["add_parser", "export"]

logger = logging.getLogger(__name__)

TABLE_NAMES = ("ticks", "candles_1m_complete", "exchange_bars", "market_status", "feed_gaps")


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "export",
        help="write recorded tables to Parquet, one file per table per IST trading day",
        description="Write what COLLECTOR_DATABASE_URL recorded on the IST trading days from --from to --to "
        "to Parquet (zstd) under --out, as table=NAME/day=YYYY-MM-DD/part-0.parquet. Needs the export extra "
        "(pip install 'collector[export]'). See docs/export.md.",
    )
    p.add_argument(
        "--from", dest="start", required=True, metavar="DAY",
        help=f"first IST trading day (YYYY-MM-DD; a time is taken as its IST day: {FORMS})",
    )  # fmt: skip
    p.add_argument("--to", dest="end", required=True, metavar="DAY", help="last IST trading day, included")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write into (created)")
    p.add_argument(
        "--tables", default=",".join(TABLE_NAMES), metavar="NAME[,NAME...]",
        help=f"which tables (default: all of {', '.join(TABLE_NAMES)})",
    )  # fmt: skip
    p.add_argument("--redo", action="store_true", help="write days again that are already exported")
    p.add_argument(
        "--progress", choices=("auto", "bar", "log"), default="auto",
        help="a progress bar (rows and days) or log lines; auto: a bar when stderr is a terminal",
    )  # fmt: skip


def _span(args: argparse.Namespace) -> tuple[date, date]:
    try:
        first = ist_day(parse_instant(args.start, "--from"))
        last = ist_day(parse_instant(args.end, "--to"))
    except SpanError as exc:
        raise UsageError(str(exc)) from None
    if last < first:
        raise UsageError(f"--to ({last}) is before --from ({first})")
    return first, last


def _tables(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLE_NAMES]
    if unknown or not names:
        raise UsageError(
            f"--tables: {', '.join(unknown) or 'none given'}: choose from {', '.join(TABLE_NAMES)}"
        )
    return names


class _Progress:
    """A bar of rows and one of days on a terminal; log lines otherwise."""

    def __init__(self, total_days: int, bar: bool) -> None:
        self.bars: tuple[Any, Any] | None = None
        if bar:
            from tqdm import tqdm

            self.bars = (
                tqdm(total=total_days, unit="day", desc="days", position=0),
                tqdm(unit="rows", unit_scale=True, desc="rows", position=1),
            )

    def rows(self, n: int) -> None:
        if self.bars is not None:
            self.bars[1].update(n)

    def day(self) -> None:
        if self.bars is not None:
            self.bars[0].update(1)

    def done(self, table: str, day: date, rows: int, seconds: float, path: Path) -> None:
        if self.bars is not None:
            self.bars[1].set_postfix_str(f"{table} {day}", refresh=True)
        else:
            rate = rows / seconds if seconds > 0 else 0.0
            logger.info(
                "exported %s %s: %d rows in %.1fs (%.0f rows/s) to %s", table, day, rows, seconds, rate, path
            )

    def close(self) -> None:
        if self.bars is not None:
            for bar in self.bars:
                bar.close()


async def export(args: argparse.Namespace, settings: Settings) -> int:
    """Export the span; returns the exit status (UsageError for input that cannot work)."""
    first, last = _span(args)
    tables = _tables(args.tables)
    try:
        from collector.export import parquet
    except ImportError as exc:
        raise UsageError(f"needs the export extra (pip install 'collector[export]'): {exc}") from None
    from collector.db.connect import connect

    out: Path = args.out
    try:
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: {out} is not usable: {exc.strerror}") from None
    conn = await connect(settings.database_url.get_secret_value(), timeout=10, command_timeout=None)
    span = list(days(first, last))
    bar = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(len(span), bar)
    written = skipped = total_rows = 0
    started = time.monotonic()
    try:
        await parquet.use_integer_timestamps(conn)
        for day in span:
            start, end = day_bounds(day)
            for name in tables:
                folder = out / f"table={name}" / f"day={day.isoformat()}"
                for stale in parquet.stale_temporaries(folder):
                    logger.info("removing %s, left by an interrupted export", stale)
                    stale.unlink()
                path = folder / "part-0.parquet"
                done_at = parquet.written_at(path)
                if done_at is not None and done_at >= end.timestamp() and not args.redo:
                    skipped += 1
                    continue
                began = time.monotonic()
                rows = await parquet.export_day(
                    conn, parquet.TABLES[name], start, end, path, on_rows=progress.rows
                )
                if rows:
                    written += 1
                    total_rows += rows
                    progress.done(name, day, rows, time.monotonic() - began, path)
                elif done_at is not None:
                    path.unlink()  # redone, and the rows are gone (retention): no file, as for any empty day
            progress.day()
    finally:
        progress.close()
        await conn.close()
    took = time.monotonic() - started
    if not written and not skipped:
        raise UsageError(f"nothing was recorded on the IST days {first} to {last} in {', '.join(tables)}")
    again = f"; {skipped} already exported (--redo writes them again)" if skipped else ""
    print(f"exported {total_rows} rows to {written} files under {out} in {took:.1f}s{again}", flush=True)
    return 0
