"""Upstox's market holiday list, cached in ``market_holidays``.

The calendar (:mod:`collector.core.calendar`) decides whether a gap is recorded
for time nobody listened, so it must know the holidays before the first
connection of a start-up, network or not: the list is read from the database
first, fetched from ``GET /v2/market/holidays`` when the cache was not
fetched today (IST), and fetched again every morning.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from collector.core.calendar import Holiday, parse_holidays
from collector.core.times import ist_day

__all__ = ["fetched_today", "load_holidays", "store_holidays"]

logger = logging.getLogger(__name__)


async def load_holidays(conn: asyncpg.Connection) -> tuple[list[Holiday], datetime | None]:
    """The cached holidays, and when the cache was last fetched (None: never)."""
    rows = await conn.fetch(
        "SELECT day, description, holiday_type, closed_exchanges, open_exchanges::text AS open_exchanges, "
        "fetched_at FROM market_holidays ORDER BY day"
    )
    items = [
        {
            "date": r["day"].isoformat(),
            "description": r["description"],
            "holiday_type": r["holiday_type"],
            "closed_exchanges": list(r["closed_exchanges"]),
            "open_exchanges": json.loads(r["open_exchanges"]),
        }
        for r in rows
    ]
    fetched = max((r["fetched_at"] for r in rows), default=None)
    return parse_holidays({"data": items}), fetched


async def store_holidays(conn: asyncpg.Connection, payload: Any) -> list[Holiday]:
    """Validate a holiday list body and make the cache hold it; raises ValueError if malformed.

    Days of the years the list covers that it no longer names are removed
    (Upstox revises the list during the year); other years are kept.
    """
    holidays = parse_holidays(payload)  # the whole list is checked before anything is written
    items = {h.day: item for h, item in zip(holidays, payload["data"], strict=True)}
    years = sorted({day.year for day in items})
    async with conn.transaction():
        if years:
            await conn.execute(
                "DELETE FROM market_holidays WHERE extract(year FROM day)::int = ANY($1::int[]) "
                "AND NOT day = ANY($2::date[])",
                years,
                list(items),
            )
        for day, item in items.items():
            specials = [
                {
                    "exchange": str(o["exchange"]),
                    "start_time": int(o["start_time"]),
                    "end_time": int(o["end_time"]),
                }
                for o in item.get("open_exchanges") or []
            ]
            await conn.execute(
                "INSERT INTO market_holidays AS h (day, description, holiday_type, closed_exchanges, open_exchanges, "
                "fetched_at) VALUES ($1, $2, $3, $4, $5::jsonb, now()) ON CONFLICT (day) DO UPDATE SET "
                "description = excluded.description, holiday_type = excluded.holiday_type, "
                "closed_exchanges = excluded.closed_exchanges, open_exchanges = excluded.open_exchanges, "
                "fetched_at = excluded.fetched_at",
                day,
                str(item.get("description") or ""),
                item.get("holiday_type"),
                sorted(str(x) for x in item.get("closed_exchanges") or []),
                json.dumps(specials),
            )
        if not items:
            # Nothing to cache: the next start-up asks again.
            logger.warning("Upstox's holiday list is empty")
    return holidays


def fetched_today(fetched_at: datetime | None, now: datetime | None = None) -> bool:
    """Whether the cache was fetched on today's IST date."""
    if fetched_at is None:
        return False
    today: date = ist_day(now or datetime.now(UTC))
    return ist_day(fetched_at) >= today
