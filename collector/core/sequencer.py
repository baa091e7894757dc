"""Per-instrument continuity: repeated snapshots and volume. No I/O.

Upstox sends an ``initial_feed`` snapshot of every subscribed key after each
subscribe, so after a reconnect the last state of each instrument arrives a
second time. The rule, applied here before anything is batched:

1. A snapshot tick whose last trade time, price and cumulative volume (vtt)
   equal the last tick seen for that instrument is a repeat: it is dropped and
   counted as a suppressed duplicate. A snapshot that differs (trades happened
   while we were disconnected) is a real observation and is kept, marked
   ``snapshot``.
2. ``volume`` is the increase of vtt since the instrument's previous tick of the
   same trading day (IST). A repeated state adds 0, so nothing is counted
   twice. The first tick of a day seen for an instrument gets volume = vtt only
   when vtt == ltq (it is the day's first trade); otherwise the earlier volume
   cannot be placed in time and the tick's volume is NULL. Modes without vtt
   (ltpc, index) have NULL volume.

The state at each committed journal position is stored with the rows
(:meth:`TickSequencer.dump`, :meth:`TickSequencer.load`), so a writer that
restarts from that position computes exactly the rows it would have computed
live. A journal seen for the first time is seeded from the latest stored ticks
(``seed``).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from collector.core.pgcopy import NULL, tick_from_row, tick_parts
from collector.core.records import Tick, TickRow
from collector.core.times import DAY_MS, EPOCH, IST_OFFSET_MS

__all__ = ["TickSequencer"]

_US = timedelta(microseconds=1)
_IST_US = IST_OFFSET_MS * 1000
_DAY_US = DAY_MS * 1000
# State older than this (relative to the newest instrument in it) is dropped:
# an instrument silent for a week (an expired contract) needs no continuity.
KEEP = timedelta(days=7)
_KEEP_US = KEEP // _US
_PRUNE_EVERY_US = 3_600_000_000
_VOLUME_FIELD = struct.Struct(">iq").pack


class TickSequencer:
    """Suppresses repeated snapshot ticks and computes per-tick volume."""

    def __init__(self) -> None:
        # instrument_key -> (time in us since the epoch, ltp, vtt, IST day number)
        self._last: dict[str, tuple[int, float, int | None, int]] = {}
        self.duplicates = 0
        self.duplicate_kinds: Counter[str] = Counter()
        # The state as JSON, one piece per instrument, redone only for those that
        # changed: a writer commits it with every batch (see dump_json).
        self._json: dict[str, str] = {}
        self._changed: set[str] = set()
        self._keys_json: dict[str, str] = {}
        self._pruned_at = 0
        self._newest = 0  # the latest tick time seen by rows()

    def seed(self, key: str, time: datetime, ltp: float, vtt: int | None) -> None:
        """Remember a tick already stored (e.g. the latest one in the database)."""
        self._seed_us(key, (time - EPOCH) // _US, ltp, vtt)

    def _seed_us(self, key: str, time_us: int, ltp: float, vtt: int | None) -> None:
        self._last[key] = (time_us, ltp, vtt, (time_us + _IST_US) // _DAY_US)
        self._changed.add(key)

    def dump(self) -> dict[str, list[Any]]:
        """The state as JSON-able data: key -> [time in us since the epoch, ltp, vtt]."""
        self._prune()
        return {k: [v[0], v[1], v[2]] for k, v in self._last.items()}

    def _prune(self, *, every_us: int = 0) -> None:
        """Forget instruments silent for KEEP before the newest one (at most once per ``every_us``)."""
        last = self._last
        if last:
            if every_us and self._newest - self._pruned_at < every_us:
                return
            newest = max(v[0] for v in last.values())
            self._pruned_at = newest
            cutoff = newest - _KEEP_US
            for k in [k for k, v in last.items() if v[0] < cutoff]:
                del last[k]
                self._changed.add(k)

    def dump_json(self) -> str:
        """:meth:`dump` as JSON text, rewriting only what changed since the last call.

        A writer stores the state with every batch; for a few hundred instruments
        a whole ``json.dumps`` per batch cost more than the batch's rows at low rates.
        """
        # Pruning looks at every instrument: an hour of data time between two is plenty
        # for a rule that keeps a week.
        self._prune(every_us=_PRUNE_EVERY_US)
        last, pieces, names = self._last, self._json, self._keys_json
        for key in self._changed:
            v = last.get(key)
            if v is None:
                pieces.pop(key, None)
                continue
            name = names.get(key)
            if name is None:
                name = names[key] = json.dumps(key)
            ltp, vtt = v[1], v[2]
            # A finite float's repr is its JSON; NaN and infinities as json.dumps writes them.
            number = repr(ltp) if ltp - ltp == 0 else json.dumps(ltp)
            pieces[key] = f"{name}: [{v[0]}, {number}, {'null' if vtt is None else vtt}]"
        self._changed.clear()
        return "{" + ", ".join(pieces.values()) + "}"

    def load(self, state: dict[str, list[Any]]) -> None:
        """Replace the state with one from :meth:`dump`."""
        self._last = {}
        self._json = {}
        self._changed = set()
        for key, (time_us, ltp, vtt) in state.items():
            self._seed_us(key, time_us, ltp, vtt)

    def rows(self, ticks: list[TickRow]) -> tuple[list[bytes], int | None]:
        """The rows of ``ticks`` to store, in order, with ``volume`` filled in, and
        the earliest time among them (us since the Unix epoch; None if none).

        The writer's path: each tick's bytes with its volume between head and tail.
        """
        out: list[bytes] = []
        last = self._last
        oldest, newest = 1 << 62, 0
        changed = self._changed
        for key, kind, time_us, ltp, vtt, ltq, snapshot, head, tail in ticks:
            prev = last.get(key)
            day = (time_us + _IST_US) // _DAY_US
            if snapshot and prev is not None and prev[0] == time_us and prev[1] == ltp and prev[2] == vtt:
                self.duplicates += 1
                self.duplicate_kinds[kind] += 1
                continue
            volume = NULL
            if vtt is not None:
                if prev is not None and prev[3] == day and prev[2] is not None:
                    volume = _VOLUME_FIELD(8, max(vtt - prev[2], 0))
                elif vtt == ltq:
                    volume = _VOLUME_FIELD(8, vtt)
            last[key] = (time_us, ltp, vtt, day)
            changed.add(key)
            out.append(head + volume + tail)
            if time_us < oldest:
                oldest = time_us
            if time_us > newest:
                newest = time_us
        if newest > self._newest:
            self._newest = newest
        return out, (oldest if out else None)

    def process(self, ticks: list[Tick]) -> list[Tick]:
        """The same as :meth:`rows`, for ``Tick`` records (tests and tools; slow)."""
        rows = [
            TickRow(t.instrument_key, t.kind, (t.time - EPOCH) // _US, t.ltp, t.vtt, t.ltq, t.snapshot,
                    *tick_parts(t))
            for t in ticks
        ]  # fmt: skip
        return [tick_from_row(row) for row in self.rows(rows)[0]]
