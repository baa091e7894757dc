"""The batcher's seal and grow rule, on a clock the test holds (monotonic seconds as plain numbers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.core.batch import Batcher
from collector.core.pgcopy import bar_row, tick_row
from collector.core.records import Bar, BarRow
from tests.support.ticks import tick

T = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
ROW = tick_row(tick("A", T, 1, 1))  # a tick as the writer batches it: its row of ticks, binary COPY


def batcher(max_batch_rows: int = 3, flush_interval_s: float = 1.0, grow_factor: int = 2) -> Batcher:
    return Batcher(max_batch_rows=max_batch_rows, flush_interval_s=flush_interval_s, grow_factor=grow_factor)


def test_an_empty_batch_is_due_at_once_for_the_positions_it_commits() -> None:
    b = batcher()
    assert b.due(0.0) and b.seal() is None and not b.full()


def test_a_batch_is_due_when_its_first_record_is_flush_interval_old() -> None:
    b = batcher()
    b.add(10.0, [ROW])
    assert not b.due(10.0) and not b.due(10.999)
    b.add(10.5, [ROW])  # a later record does not restart the clock
    assert b.due(11.0) and b.age(11.0) == 1.0
    batch = b.seal()
    assert batch is not None and len(batch.ticks) == 2 and batch.opened_at == 10.0
    assert len(b) == 0 and b.age(12.0) == 0.0


def test_a_batch_is_due_at_once_when_it_holds_max_batch_rows_ticks() -> None:
    b = batcher()
    b.add(10.0, [ROW, ROW])
    assert not b.due(10.1)
    b.add(10.1, [ROW])
    assert b.due(10.1)


def test_records_other_than_ticks_wait_for_the_interval() -> None:
    b = batcher()
    b.add(5.0, bars=[entry(Bar("A", "I1", T, 1, 2, 1, 2, 10, T))])
    assert not b.due(5.5) and b.due(6.0)


def test_while_a_write_is_in_flight_the_batch_grows_to_grow_factor_times_the_bound() -> None:
    b = batcher(max_batch_rows=3, grow_factor=2)
    for n in range(1, 6):
        b.add(float(n), [ROW])
        assert not b.full(), n
    b.add(6.0, [ROW])
    assert b.full()
    b.seal()
    assert not b.full()


def test_bars_keep_the_latest_version() -> None:
    b = batcher(max_batch_rows=10)
    first = Bar("A", "I1", T, 1, 2, 1, 2, 10, T)
    second = first._replace(high=3, close=3, volume=12)
    other = first._replace(interval="1d")
    b.add(0.0, bars=[entry(first), entry(other)])
    b.add(0.1, bars=[entry(second)])
    batch = b.seal()
    assert batch is not None and sorted(batch.bars) == sorted([bar_row(second), bar_row(other)])


def entry(bar: Bar) -> BarRow:
    return BarRow((bar.instrument_key, bar.interval, int(bar.bar_start.timestamp() * 1000)), bar_row(bar))


@pytest.mark.parametrize(
    "sizes",
    [
        {"max_batch_rows": 0, "flush_interval_s": 1, "grow_factor": 1},
        {"max_batch_rows": 1, "flush_interval_s": 0, "grow_factor": 1},
        {"max_batch_rows": 1, "flush_interval_s": 1, "grow_factor": 0},
    ],
)
def test_rejects_nonsense_sizes(sizes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Batcher(**sizes)  # type: ignore[arg-type]
