from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.batch import Batch
from collector.exceptions import SpoolFullError
from collector.sink.spool import Spool
from tests.test_sequencer import tick

T = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def batch(n: int) -> Batch:
    return Batch(uuid.uuid4(), ticks=[tick("A", T, float(i), i) for i in range(n)])


def test_fifo_across_segments_and_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=50_000_000, segment_bytes=2000)
    batches = [batch(5) for _ in range(6)]
    for b in batches:
        spool.append(b)
    assert len(list(tmp_path.glob("*.spool"))) > 1
    first = spool.peek()
    assert first is not None and first.batch_id == batches[0].batch_id
    spool.ack()
    spool.close()
    again = Spool(tmp_path, max_bytes=50_000_000)  # a restart: the first batch may come back
    assert again.rows >= 25
    seen = []
    while (b := again.peek()) is not None:
        seen.append(b.batch_id)
        again.ack()
    assert seen[-5:] == [b.batch_id for b in batches[1:]]
    assert again.bytes == 0 and again.rows == 0 and not list(tmp_path.glob("*.spool"))
    again.close()


def test_torn_tail_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=50_000_000)
    spool.append(batch(3))
    spool.append(batch(3))
    spool.close()
    [segment] = tmp_path.glob("*.spool")
    data = segment.read_bytes()
    segment.write_bytes(data[:-10])  # a crash in the middle of the second record
    again = Spool(tmp_path, max_bytes=50_000_000)
    assert len(again) == 1
    assert again.peek() is not None
    again.ack()
    assert again.peek() is None
    again.append(batch(2))  # writing goes on in a new segment
    assert again.peek() is not None
    again.close()


def test_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1024 * 1024)
    with pytest.raises(SpoolFullError):
        for _ in range(1000):
            spool.append(batch(50))
    assert spool.bytes <= 1024 * 1024
    spool.close()
