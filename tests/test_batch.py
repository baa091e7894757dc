from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.core.batch import Batcher
from collector.core.records import Bar
from tests.test_sequencer import tick

T = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def test_seals_by_size_or_age() -> None:
    b = Batcher(max_batch_rows=3, flush_interval_s=1.0)
    assert b.seal() is None and b.deadline() is None
    b.add(10.0, [tick("A", T, 1, 1)])
    assert not b.due(10.5) and b.due(11.0)
    b.add(10.6, [tick("A", T, 1, 1), tick("A", T, 1, 1)])
    assert b.full() and b.due(10.6)
    batch = b.seal()
    assert batch is not None and len(batch.ticks) == 3 and batch.opened_at == 10.0
    assert len(b) == 0


def test_bars_keep_the_latest_version() -> None:
    b = Batcher(max_batch_rows=10, flush_interval_s=1.0)
    first = Bar("A", "I1", T, 1, 2, 1, 2, 10, T)
    second = first._replace(high=3, close=3, volume=12)
    other = first._replace(interval="1d")
    b.add(0.0, bars=[first, other])
    b.add(0.1, bars=[second])
    batch = b.seal()
    assert batch is not None and sorted(batch.bars) == sorted([second, other])


def test_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        Batcher(max_batch_rows=0, flush_interval_s=1)
