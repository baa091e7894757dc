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

from datetime import date, datetime, timedelta
from typing import Any

from collector.core.records import TICK_COLUMNS, Tick
from collector.core.times import EPOCH, ist_day

__all__ = ["TickSequencer"]

_VOLUME = TICK_COLUMNS.index("volume")
_US = timedelta(microseconds=1)
# State older than this (relative to the newest instrument in it) is dropped:
# an instrument silent for a week (an expired contract) needs no continuity.
KEEP = timedelta(days=7)


class TickSequencer:
    """Suppresses repeated snapshot ticks and computes per-tick volume."""

    def __init__(self) -> None:
        # instrument_key -> (time, ltp, vtt, trading day)
        self._last: dict[str, tuple[datetime, float, int | None, date]] = {}
        self.duplicates = 0

    def seed(self, key: str, time: datetime, ltp: float, vtt: int | None) -> None:
        """Remember a tick already stored (e.g. the latest one in the database)."""
        self._last[key] = (time, ltp, vtt, ist_day(time))

    def dump(self) -> dict[str, list[Any]]:
        """The state as JSON-able data: key -> [time in us since the epoch, ltp, vtt]."""
        if not self._last:
            return {}
        newest = max(v[0] for v in self._last.values())
        stale = [k for k, v in self._last.items() if newest - v[0] > KEEP]
        for k in stale:
            del self._last[k]
        return {k: [(v[0] - EPOCH) // _US, v[1], v[2]] for k, v in self._last.items()}

    def load(self, state: dict[str, list[Any]]) -> None:
        """Replace the state with one from :meth:`dump`."""
        self._last = {}
        for key, (time_us, ltp, vtt) in state.items():
            self.seed(key, EPOCH + timedelta(microseconds=time_us), ltp, vtt)

    def process(self, ticks: list[Tick]) -> list[Tick]:
        """Return the ticks to store, in order, with ``volume`` filled in."""
        out: list[Tick] = []
        last = self._last
        for tick in ticks:
            key = tick.instrument_key
            prev = last.get(key)
            day = ist_day(tick.time)
            if (
                tick.snapshot
                and prev is not None
                and prev[0] == tick.time
                and prev[1] == tick.ltp
                and prev[2] == tick.vtt
            ):
                self.duplicates += 1
                continue
            vtt = tick.vtt
            volume: int | None = None
            if vtt is not None:
                if prev is not None and prev[3] == day and prev[2] is not None:
                    volume = max(vtt - prev[2], 0)
                elif vtt == tick.ltq:
                    volume = vtt
                # Slicing is much cheaper than _replace on this per-tick path.
                tick = Tick._make((*tick[:_VOLUME], volume, *tick[_VOLUME + 1 :]))
            last[key] = (tick.time, tick.ltp, vtt, day)
            out.append(tick)
        return out
