"""How far a writer is behind its feed, read from the journal folder alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from collector.journal.appender import JournalAppender
from collector.journal.format import FRAME
from collector.journal.progress import open_committed, progress, read_committed, record_committed
from tests.support.options import journal_options


def journal(path: Path, n: int, segment_bytes: int = 1024 * 1024, t0_ns: int = 0) -> list[int]:
    """Append n records; return the position after each."""
    ends = []
    with JournalAppender(path, journal_options(fsync="never", segment_bytes=segment_bytes)) as j:
        for i in range(n):
            j.append(FRAME, b"x" * 100, (t0_ns or time.time_ns()) + i * 1_000_000_000)
            ends.append(j.position)
    return ends


def test_nothing_committed_yet_counts_all_on_disk(tmp_path: Path) -> None:
    t0 = time.time_ns() - 60 * 10**9
    ends = journal(tmp_path, 10, t0_ns=t0)
    p = progress(tmp_path)
    assert (p.end, p.committed, p.lag_bytes) == (ends[-1], 0, ends[-1])
    assert p.disk_bytes == ends[-1]
    assert p.oldest_uncommitted is not None and abs(p.oldest_uncommitted - t0 / 1e9) < 1e-3


def test_the_committed_file_moves_the_lag_and_its_age(tmp_path: Path) -> None:
    t0 = time.time_ns() - 60 * 10**9
    ends = journal(tmp_path, 10, t0_ns=t0)
    fd = open_committed(tmp_path)
    try:
        record_committed(fd, ends[3])
        p = progress(tmp_path)
        assert read_committed(tmp_path) == ends[3]
        assert p.lag_bytes == ends[-1] - ends[3]
        # The oldest uncommitted record is the fifth: received 4 s after the first.
        assert p.oldest_uncommitted is not None and abs(p.oldest_uncommitted - (t0 / 1e9 + 4)) < 1e-3
        record_committed(fd, ends[-1])
        p = progress(tmp_path)
        assert p.lag_bytes == 0 and p.oldest_uncommitted is None
    finally:
        os.close(fd)


def test_deleted_segments_and_a_committed_position_in_a_later_one(tmp_path: Path) -> None:
    ends = journal(tmp_path, 40, segment_bytes=1000)
    segments = sorted(tmp_path.glob("*.journal"))
    for s in segments[:2]:
        s.unlink()  # committed and released by the writer
    fd = open_committed(tmp_path)
    try:
        record_committed(fd, ends[30])
    finally:
        os.close(fd)
    p = progress(tmp_path)
    assert p.end == ends[-1] and p.committed == ends[30]
    assert p.disk_bytes == sum(s.stat().st_size for s in segments[2:])


def test_an_empty_or_missing_folder(tmp_path: Path) -> None:
    p = progress(tmp_path / "nothing")
    assert (p.end, p.committed, p.disk_bytes, p.lag_bytes, p.oldest_uncommitted) == (0, 0, 0, 0, None)
    (tmp_path / "committed").write_text("garbage\n")
    assert read_committed(tmp_path) is None
