"""The journal on real files: framing, torn tails, corruption, segments, locks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from collector.exceptions import JournalLockedError
from collector.journal.appender import JournalAppender
from collector.journal.files import journal_id, segment_paths
from collector.journal.format import EVENT, FRAME, HEADER, MAGIC, TEXT, scan
from collector.journal.reader import JournalReader, last_record_time
from tests.support.options import journal_options


def payloads(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, 3000)) for _ in range(n)]


def read_all(directory: Path, start: int = 0) -> tuple[list[bytes], JournalReader]:
    reader = JournalReader(directory, chunk_bytes=8192)
    reader.seek(start)
    out: list[bytes] = []
    while records := reader.read():
        out.extend(r.payload for r in records)
    return out, reader


def test_records_come_back_in_order_with_kinds_times_and_positions(tmp_path: Path) -> None:
    data = payloads(200)
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        times = [j.append((FRAME, TEXT, EVENT)[i % 3], p) for i, p in enumerate(data)]
        end = j.position
    reader = JournalReader(tmp_path)
    records = []
    while batch := reader.read(4096):
        records.extend(batch)
    assert [r.payload for r in records] == data
    assert [r.kind for r in records] == [(FRAME, TEXT, EVENT)[i % 3] for i in range(200)]
    assert [r.time_ns for r in records] == times and times == sorted(set(times))  # strictly increasing
    assert records[-1].end == end == reader.position
    assert reader.skipped == []


def test_receive_times_never_go_backwards_whatever_the_clock_does(tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        first = j.append(FRAME, b"a", time_ns=2_000)
        second = j.append(FRAME, b"b", time_ns=1_000)  # the clock stepped back
    assert second == first + 1


def test_segments_roll_and_positions_run_on_across_them(tmp_path: Path) -> None:
    data = payloads(300)
    with JournalAppender(tmp_path, journal_options(fsync="never", segment_bytes=50_000)) as j:
        for p in data:
            j.append(FRAME, p)
    segments = segment_paths(tmp_path)
    assert len(segments) > 5
    base = 0
    for path in segments:  # each segment is named after the position of its first byte
        assert int(path.stem) == base
        base += path.stat().st_size
    got, _ = read_all(tmp_path)
    assert got == data


def test_a_new_writer_starts_a_new_segment_after_a_torn_tail(tmp_path: Path) -> None:
    first, second = payloads(20, seed=2), payloads(20, seed=3)
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        for p in first:
            j.append(FRAME, p)
    # The process died in the middle of a write: half a record at the end.
    [segment] = segment_paths(tmp_path)
    with segment.open("ab") as f:
        f.write(MAGIC + b"\x10\x00\x00")
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        for p in second:
            j.append(FRAME, p)
    assert len(segment_paths(tmp_path)) == 2
    got, reader = read_all(tmp_path)
    assert got == first + second
    assert reader.skipped == [(segment.stat().st_size - 7, 7)]


def test_an_incomplete_record_at_the_live_end_is_waited_for_not_skipped(tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        j.append(FRAME, b"x" * 100)
        j.append(FRAME, b"y" * 100)
    [segment] = segment_paths(tmp_path)
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-50])  # the second record is still being written
    reader = JournalReader(tmp_path)
    assert [r.payload for r in reader.read()] == [b"x" * 100]
    assert reader.read() == [] and reader.skipped == []
    segment.write_bytes(whole)  # ... and now it is complete
    assert [r.payload for r in reader.read()] == [b"y" * 100]


@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "garbage"])
def test_a_corrupt_record_mid_segment_is_skipped_and_reported(tmp_path: Path, damage: str) -> None:
    data = payloads(30, seed=4)
    positions = []
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        for p in data:
            positions.append(j.position)
            j.append(FRAME, p)
    [segment] = segment_paths(tmp_path)
    raw = bytearray(segment.read_bytes())
    victim = 12
    start, end = positions[victim], positions[victim + 1]
    if damage == "bit-flip":
        raw[start + HEADER.size + len(data[victim]) // 2] ^= 0x10 if data[victim] else 0
        raw[start + 9] ^= 0x01  # the CRC itself, in case the payload is empty
    elif damage == "truncated":
        del raw[start + HEADER.size : end - 3]  # the record lost most of its bytes, the rest follows
    else:
        raw[start:end] = os.urandom(end - start)
    segment.write_bytes(bytes(raw))
    got, reader = read_all(tmp_path)
    assert got == data[:victim] + data[victim + 1 :]
    [(where, size)] = reader.skipped
    assert where == start and size > 0


def test_a_corrupt_length_cannot_make_the_reader_lose_the_rest(tmp_path: Path) -> None:
    data = payloads(10, seed=5)
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        for p in data:
            j.append(FRAME, p)
    [segment] = segment_paths(tmp_path)
    raw = bytearray(segment.read_bytes())
    raw[4:8] = (0x7FFFFFFF).to_bytes(4, "little")  # the first record claims 2 GB
    segment.write_bytes(bytes(raw))
    got, _ = read_all(tmp_path)
    assert got == data[1:]


def test_scan_only_ever_yields_records_that_check_out() -> None:
    rng = random.Random(7)
    for _ in range(300):
        blob = rng.randbytes(rng.randint(0, 400))
        if rng.random() < 0.5:
            blob = MAGIC + blob  # a plausible start
        found = scan(blob, 0, final=rng.random() < 0.5)
        assert 0 <= found.consumed <= len(blob)
        for r in found.records:
            assert r.kind in (FRAME, TEXT, EVENT)


def test_release_deletes_only_whole_segments_before_the_committed_position(tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never", segment_bytes=10_000)) as j:
        for p in payloads(60, seed=6):
            j.append(FRAME, p)
        end = j.position
    segments = [int(p.stem) for p in segment_paths(tmp_path)]
    reader = JournalReader(tmp_path)
    committed = segments[3] + 5  # inside the fourth segment
    freed = reader.release(committed)
    assert [int(p.stem) for p in segment_paths(tmp_path)] == segments[3:]
    assert freed == segments[3]
    reader.release(end)  # everything committed: the newest segment stays for the writer
    assert [int(p.stem) for p in segment_paths(tmp_path)] == segments[-1:]


def test_a_position_whose_data_is_gone_resumes_at_the_oldest_segment(tmp_path: Path) -> None:
    data = payloads(40, seed=8)
    with JournalAppender(tmp_path, journal_options(fsync="never", segment_bytes=10_000)) as j:
        for p in data:
            j.append(FRAME, p)
    oldest = segment_paths(tmp_path)[0]
    size = oldest.stat().st_size
    oldest.unlink()
    reader = JournalReader(tmp_path)
    assert reader.seek(0) == size
    assert reader.skipped == [(0, size)]


def test_one_writer_per_journal(tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never")):
        with pytest.raises(JournalLockedError, match=rf"in use by pid {os.getpid()}"):
            JournalAppender(tmp_path, journal_options()).open()
    with JournalAppender(tmp_path, journal_options(fsync="never")):  # released on close
        pass


def test_the_journal_keeps_its_identity_and_its_last_receive_time(tmp_path: Path) -> None:
    assert last_record_time(tmp_path) is None
    ident = journal_id(tmp_path)
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        j.append(FRAME, b"a", time_ns=1_700_000_000_000_000_000)
        j.append(EVENT, b"{}", time_ns=1_700_000_001_500_000_000)
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        assert j.id == ident  # a restart continues the same journal
    # The restart wrote nothing: its segment does not exist, the old end is still the last data.
    assert len(segment_paths(tmp_path)) == 1
    last = last_record_time(tmp_path)
    assert last is not None and last.timestamp() == pytest.approx(1_700_000_001.5)


def test_a_refused_write_leaves_no_torn_record(tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        j.append(FRAME, b"a" * 10)
        size = segment_paths(tmp_path)[0].stat().st_size
        os.close(j._fd)  # type: ignore[arg-type]  # the disk "fails": every write now errors
        from collector.exceptions import JournalWriteError

        with pytest.raises(JournalWriteError):
            j.append(FRAME, b"b" * 10)
        j._fd = None
    assert segment_paths(tmp_path)[0].stat().st_size == size
    got, reader = read_all(tmp_path)
    assert got == [b"a" * 10] and reader.skipped == []
