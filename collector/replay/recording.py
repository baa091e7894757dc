"""A recorded span, read back from the database as the frames it arrived in.

The replay clock runs on ``received_at``, the recorder's own clock: the order
and the spacing in which the collector read the frames, the clock its gaps and
sessions were recorded in too. A span ``[start, end)`` holds every row received
in it. Rows of one frame share ``received_at`` and ``feed_time`` (the frame's
``currentTs``); a recorded frame is rebuilt from them:

- **ticks**: one frame per (``received_at``, ``feed_time``, ``snapshot``), a
  ``live_feed`` frame, or an ``initial_feed`` frame for ``snapshot`` rows (the
  reconnect snapshots the recorder kept: those that told something new);
- **exchange bars**: ``exchange_bars`` keeps each bar's latest version only,
  with the receive time of the frame it came in (``updated_at``). A bar rides
  in that frame, with its instrument's tick; frames in between carry no
  version of it, as none was kept. Where that frame's tick of the instrument
  was not stored (a reconnect snapshot that repeated the last state: the
  recorder drops those), the bar rides in an ``initial_feed`` frame repeating
  the instrument's last state at that time, which a recorder drops again;
- **market status**: ``market_status`` keeps each writer's status *changes*;
  the rows received together make one ``market_info`` frame (``currentTs`` their
  time);
- **gaps** (``feed_gaps``) are silence: nothing was received in them, so
  nothing is sent; the replay logs them as its clock passes.
  ``feed_sessions`` are not acted out: a client's socket stays up across the
  recorder's reconnects, and what a reconnect brought is the snapshot above.

Rows are read through ``WITH HOLD`` cursors: the query runs once, its result
is kept by the server (on disk when large) and fetched in batches, and no
transaction stays open while the replay runs (a day at speed 1 would
otherwise hold back vacuum on a live database for a day). Ticks are looked up
by trade time too, which is what the table is partitioned and indexed on: a
reconnect snapshot repeating a trade older than :data:`LOOKBACK` before the
span is left out.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Generic, TypeVar

import asyncpg

from collector.core.encode import RANK
from collector.core.records import TICK_COLUMNS, Bar, FrameKind, StatusChange, Tick

__all__ = ["LOOKBACK", "NothingRecorded", "RecordedFrame", "Recording", "UnknownKeys"]

logger = logging.getLogger(__name__)

# How far before the span a reconnect snapshot's trade may lie and still be replayed.
LOOKBACK = timedelta(days=1)
# A trade time after the receive time is clock skew; more than this is not looked for.
SKEW = timedelta(hours=1)
FETCH_ROWS = 1000
BAR_COLUMNS = Bar._fields
CARRIER_KINDS = frozenset({"full", "full_d30", "index"})  # payloads with room for OHLC bars

_SPAN = "received_at >= $1 AND received_at < $2"
_TICKS_IN_SPAN = f"{_SPAN} AND time >= $1 - $3::interval AND time < $2 + $4::interval"
_KEYS = "($5::text[] IS NULL OR instrument_key = ANY($5::text[]))"
_T = TypeVar("_T")


class NothingRecorded(ValueError):
    """No tick was received in the span (for the keys asked)."""


class UnknownKeys(ValueError):
    """Keys asked for that the span has no tick of."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else ""))
        self.keys = keys


@dataclass(slots=True)
class RecordedFrame:
    """One frame as the recorder read it."""

    at: datetime  # received_at: where the replay clock puts it
    kind: FrameKind
    feed_time: datetime  # its currentTs
    ticks: list[Tick] = field(default_factory=list)
    bars: dict[str, list[Bar]] = field(default_factory=dict)  # by instrument key
    statuses: list[StatusChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecordedGap:
    connection: int
    started_at: datetime
    ended_at: datetime
    reason: str


class _Rows(Generic[_T]):
    """Rows of a ``WITH HOLD`` cursor in time order, fetched in batches, taken a time at a time."""

    def __init__(
        self, conn: asyncpg.Connection, name: str, make: Callable[[Any], _T], time: Callable[[_T], datetime]
    ) -> None:
        self._conn = conn
        self._name = name
        self._make = make
        self._time = time
        self._buffer: deque[_T] = deque()
        self._done = False

    async def next_time(self) -> datetime | None:
        """The time of the next row, None at the end."""
        if not self._buffer and not self._done:
            rows = await self._conn.fetch(f"FETCH {FETCH_ROWS} FROM {self._name}")
            self._buffer.extend(map(self._make, rows))
            self._done = len(rows) < FETCH_ROWS
        return self._time(self._buffer[0]) if self._buffer else None

    async def take(self, at: datetime) -> list[_T]:
        """The next rows of time ``at``."""
        out = []
        while await self.next_time() == at:
            out.append(self._buffer.popleft())
        return out


class Recording:
    """A span of one database, opened with :meth:`open`, read once with :meth:`frames`."""

    def __init__(self, conn: asyncpg.Connection, start: datetime, end: datetime) -> None:
        self.conn = conn
        self.start = start
        self.end = end
        self.keys: dict[str, list[str]] = {}  # key -> the kinds recorded for it, richest last
        self.ticks = 0
        self.initial: dict[str, Tick] = {}  # each key's last tick before the span
        self.initial_statuses: list[StatusChange] = []  # each segment's last status before it
        self.statuses: list[StatusChange] = []
        self.gaps: list[RecordedGap] = []
        self.sessions = 0
        self.holidays: list[dict[str, Any]] = []
        # Counted as the replay reads them: bars that rode in a repeated state, and bars nothing could carry.
        self.carried_bars = 0
        self.unplaced_bars = 0
        self._filter: list[str] | None = None

    @classmethod
    async def open(
        cls, conn: asyncpg.Connection, start: datetime, end: datetime, keys: list[str] | None = None
    ) -> Recording:
        """Read what the span holds besides its ticks; raises NothingRecorded or UnknownKeys."""
        rec = cls(conn, start, end)
        rows = await conn.fetch(
            f"SELECT instrument_key, array_agg(DISTINCT kind) AS kinds, count(*) AS n FROM ticks "
            f"WHERE {_TICKS_IN_SPAN} AND {_KEYS} GROUP BY 1",
            start, end, LOOKBACK, SKEW, keys,
        )  # fmt: skip
        rec.keys = {r["instrument_key"]: sorted(r["kinds"], key=RANK.__getitem__) for r in rows}
        rec.ticks = sum(r["n"] for r in rows)
        if keys is not None:
            unknown = sorted(set(keys) - set(rec.keys))
            if unknown:
                raise UnknownKeys(unknown)
            rec._filter = sorted(set(keys))
        if not rec.keys:
            raise NothingRecorded("no tick was received in the span")
        initial = await conn.fetch(
            f"SELECT DISTINCT ON (instrument_key) {', '.join(TICK_COLUMNS)} FROM ticks "
            "WHERE received_at < $1 AND time >= $1 - $2::interval AND time < $1 + $3::interval "
            "AND instrument_key = ANY($4::text[]) ORDER BY instrument_key, received_at DESC",
            start, LOOKBACK, SKEW, sorted(rec.keys),
        )  # fmt: skip
        rec.initial = {r["instrument_key"]: Tick._make(r) for r in initial}
        status_columns = ", ".join(StatusChange._fields)
        before = await conn.fetch(
            f"SELECT DISTINCT ON (segment, session) {status_columns} FROM market_status "
            "WHERE received_at < $1 ORDER BY segment, session, received_at DESC",
            start,
        )
        rec.initial_statuses = [StatusChange._make(r) for r in before]
        during = await conn.fetch(
            f"SELECT {status_columns} FROM market_status WHERE {_SPAN} ORDER BY received_at, segment",
            start,
            end,
        )
        rec.statuses = [StatusChange._make(r) for r in during]
        gaps = await conn.fetch(
            "SELECT connection, started_at, ended_at, reason FROM feed_gaps "
            "WHERE ended_at > $1 AND started_at < $2 ORDER BY started_at",
            start,
            end,
        )
        rec.gaps = [RecordedGap(r["connection"], r["started_at"], r["ended_at"], r["reason"]) for r in gaps]
        rec.sessions = await conn.fetchval(
            "SELECT count(*) FROM feed_sessions WHERE disconnected_at >= $1 AND disconnected_at < $2",
            start,
            end,
        )
        holidays = await conn.fetch(
            "SELECT day, description, holiday_type, closed_exchanges, open_exchanges::text AS open_exchanges "
            "FROM market_holidays ORDER BY day"
        )
        rec.holidays = [_holiday(r) for r in holidays]
        return rec

    async def frames(self) -> AsyncIterator[RecordedFrame]:
        """Every frame of the span, in the order it was received."""
        conn = self.conn
        async with conn.transaction():
            await conn.execute(
                f"DECLARE replay_ticks NO SCROLL CURSOR WITH HOLD FOR SELECT {', '.join(TICK_COLUMNS)} "
                f"FROM ticks WHERE {_TICKS_IN_SPAN} AND {_KEYS} "
                "ORDER BY received_at, feed_time, snapshot, instrument_key",
                self.start, self.end, LOOKBACK, SKEW, self._filter,
            )  # fmt: skip
            await conn.execute(
                f"DECLARE replay_bars NO SCROLL CURSOR WITH HOLD FOR SELECT {', '.join(BAR_COLUMNS)} "
                "FROM exchange_bars WHERE updated_at >= $1 AND updated_at < $2 "
                "AND bar_start >= $1 - $3::interval AND bar_start < $2 AND ($4::text[] IS NULL "
                "OR instrument_key = ANY($4::text[])) ORDER BY updated_at, instrument_key, interval, bar_start",
                self.start, self.end, LOOKBACK * 2, self._filter,
            )  # fmt: skip
        try:
            ticks = _Rows(conn, "replay_ticks", Tick._make, attrgetter("received_at"))
            bars = _Rows(conn, "replay_bars", Bar._make, attrgetter("updated_at"))
            async for frame in self._merge(ticks, bars):
                yield frame
        finally:
            if not conn.is_closed():
                await conn.execute("CLOSE ALL")

    async def _merge(self, ticks: _Rows[Tick], bars: _Rows[Bar]) -> AsyncIterator[RecordedFrame]:
        statuses = deque(self.statuses)
        last = dict(self.initial)  # each key's state, for the frames that carry orphan bars
        while True:
            heads = [t for t in (await ticks.next_time(), await bars.next_time()) if t is not None]
            if statuses:
                heads.append(statuses[0].received_at)
            if not heads:
                return
            at = min(heads)
            if statuses and statuses[0].received_at == at:
                frame = RecordedFrame(at, "market_info", at)
                while statuses and statuses[0].received_at == at:
                    frame.statuses.append(statuses.popleft())
                normal = [s.time for s in frame.statuses if s.session == "normal"]
                frame.feed_time = normal[0] if normal else at
                yield frame
            rows = await ticks.take(at)
            orphans: dict[str, list[Bar]] = {}
            for b in await bars.take(at):
                orphans.setdefault(b.instrument_key, []).append(b)
            group: RecordedFrame | None = None
            for tick in rows:
                if (
                    group is None
                    or tick.feed_time != group.feed_time
                    or tick.snapshot != (group.kind == "initial_feed")
                ):
                    if group is not None:
                        yield group
                    kind: FrameKind = "initial_feed" if tick.snapshot else "live_feed"
                    group = RecordedFrame(at, kind, tick.feed_time)
                group.ticks.append(tick)
                key = tick.instrument_key
                last[key] = tick
                if key in orphans:
                    group.bars[key] = orphans.pop(key)
            if group is not None:
                yield group
            if orphans:
                carrier = RecordedFrame(at, "initial_feed", at)
                for key, kept in orphans.items():
                    state = last.get(key)
                    if state is None or state.kind not in CARRIER_KINDS:
                        self.unplaced_bars += len(kept)
                        continue
                    carrier.ticks.append(state)
                    carrier.bars[key] = kept
                    self.carried_bars += len(kept)
                if carrier.ticks:
                    yield carrier


def _holiday(row: Any) -> dict[str, Any]:
    """A ``market_holidays`` row in the shape Upstox's holiday list has."""
    return {
        "date": row["day"].isoformat(),
        "description": row["description"],
        "holiday_type": row["holiday_type"],
        "closed_exchanges": list(row["closed_exchanges"]),
        "open_exchanges": json.loads(row["open_exchanges"]),
    }
