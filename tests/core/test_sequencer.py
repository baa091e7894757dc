"""The snapshot and volume rule (collector/core/sequencer.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collector.core.sequencer import TickSequencer
from tests.support.ticks import tick

T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 09:30 IST


def test_volume_is_the_increase_of_vtt() -> None:
    seq = TickSequencer()
    out = seq.process([tick("A", T0, 10, 100), tick("A", T0 + timedelta(seconds=1), 11, 130)])
    assert [t.volume for t in out] == [None, 30]


def test_first_trade_of_the_day_counts_its_quantity() -> None:
    out = TickSequencer().process([tick("A", T0, 10, 5, ltq=5)])
    assert out[0].volume == 5


def test_repeated_snapshot_is_suppressed() -> None:
    seq = TickSequencer()
    seq.process([tick("A", T0, 10, 100), tick("A", T0 + timedelta(seconds=1), 11, 130)])
    out = seq.process([tick("A", T0 + timedelta(seconds=1), 11, 130, snapshot=True)])
    assert out == [] and seq.duplicates == 1


def test_newer_snapshot_is_kept_and_counts_only_new_volume() -> None:
    seq = TickSequencer()
    seq.process([tick("A", T0, 10, 100)])
    out = seq.process([tick("A", T0 + timedelta(minutes=3), 12, 180, snapshot=True)])
    assert len(out) == 1 and out[0].snapshot and out[0].volume == 80


def test_new_day_does_not_subtract_yesterday() -> None:
    seq = TickSequencer()
    seq.process([tick("A", T0, 10, 10_000)])
    out = seq.process([tick("A", T0 + timedelta(days=1), 10, 40, ltq=7)])
    assert out[0].volume is None  # 40 traded today, but not all in this tick's minute


def test_seed_continues_after_restart() -> None:
    seq = TickSequencer()
    seq.seed("A", T0, 10.0, 100)
    assert seq.process([tick("A", T0, 10, 100, snapshot=True)]) == []
    assert seq.process([tick("A", T0 + timedelta(seconds=5), 10.5, 160)])[0].volume == 60


def test_live_repeats_are_kept() -> None:
    seq = TickSequencer()
    out = seq.process([tick("A", T0, 10, 100), tick("A", T0, 10, 100)])
    assert len(out) == 2 and out[1].volume == 0
