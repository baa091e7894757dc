"""The writer on a real TimescaleDB: journal in, rows out, exactly once whatever happens."""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from collector.core.decode import decode_frame
from collector.core.records import TICK_COLUMNS, Tick
from collector.db.migrate import migrate
from collector.journal.appender import JournalAppender
from collector.journal.files import segment_paths
from collector.journal.format import FRAME, HEADER
from collector.journal.progress import progress
from tests.support.db import connection, query
from tests.support.metrics import sample
from tests.support.options import journal_options
from tests.support.pipeline import journal_frames, make_writer, sim_frames, store
from tests.support.waiting import until


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


async def counts(dsn: str) -> tuple[int, int]:
    [r] = await query(dsn, "SELECT count(*) AS n, count(DISTINCT (instrument_key, time)) AS d FROM ticks")
    return r["n"], r["d"]


def n_ticks(frames: list[bytes]) -> int:
    now = datetime.now(UTC)
    return sum(len(decode_frame(f, now).ticks) for f in frames)


async def test_ticks_come_back_equal_field_by_field(migrated: str, tmp_path: Path) -> None:
    frames = sim_frames(5)
    end = journal_frames(tmp_path, frames)
    registry = await store(migrated, tmp_path)
    stored = {
        (r["instrument_key"], r["time"]): Tick(*r)
        for r in await query(migrated, f"SELECT {', '.join(TICK_COLUMNS)} FROM ticks")
    }
    sent = [t for f in frames for t in decode_frame(f, datetime.now(UTC)).ticks]
    assert len(stored) == len(sent)
    for t in sent:
        got = stored[(t.instrument_key, t.time)]
        for name in TICK_COLUMNS:
            if name not in ("volume", "received_at"):  # the writer fills volume; received_at is the journal's
                assert same(getattr(got, name), getattr(t, name)), (name, got, t)
    assert {t.kind for t in stored.values()} == {"ltpc", "full", "option_greeks", "full_d30", "index"}
    assert await query(migrated, "SELECT 1 FROM exchange_bars LIMIT 1")
    [position] = await query(migrated, "SELECT position FROM journal_positions")
    assert position["position"] == end
    assert sample(registry, "collector_rows_written_total", {"table": "ticks"}) == len(sent)
    assert sample(registry, "collector_receive_to_commit_seconds_count") >= 1


async def test_database_away_then_back_stores_everything_once(migrated: str, tmp_path: Path) -> None:
    up = asyncio.Event()

    async def connect() -> asyncpg.Connection:
        if not up.is_set():
            raise ConnectionRefusedError("database away (test)")
        return await asyncpg.connect(migrated)

    frames = sim_frames(20)
    writer, registry = make_writer(connect, tmp_path)
    task = asyncio.create_task(writer.run())
    try:
        for chunk in (frames[:10], frames[10:]):  # the feed keeps writing while the database is away
            journal_frames(tmp_path, chunk)
            await asyncio.sleep(0.3)
        assert sample(registry, "collector_database_up") == 0
        assert sample(registry, "collector_write_failures_total", {"kind": "transient"}) >= 2
        assert await counts(migrated) == (0, 0)
        up.set()
        await until(lambda: writer.caught_up.is_set(), 30, "everything committed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)
    assert sample(registry, "collector_database_up") == 1


async def test_an_idle_writer_notices_when_the_database_ends_its_session(
    migrated: str, tmp_path: Path
) -> None:
    frames = sim_frames(10, seed=11)
    journal_frames(tmp_path, frames)
    sessions: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        sessions.append(await asyncpg.connect(migrated))
        return sessions[-1]

    writer, registry = make_writer(connect, tmp_path)
    task = asyncio.create_task(writer.run())
    try:
        await until(lambda: writer.caught_up.is_set(), 30, "everything committed")
        async with connection(migrated) as admin:
            await admin.execute("SELECT pg_terminate_backend($1)", sessions[-1].get_server_pid())
        # Nothing more to write (a night, a closed market): it notices anyway, and says so.
        await until(lambda: sample(registry, "collector_database_up") == 0, 10, "the lost session noticed")
        await until(lambda: sample(registry, "collector_database_up") == 1, 30, "a new session")
        assert len(sessions) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)


async def test_an_idle_writer_sleeps_until_the_journal_grows(migrated: str, tmp_path: Path) -> None:
    """No polling: caught up, the writer waits for the doorbell, the database or a drain.

    Its only timer here is an hour long, so whatever it does within seconds
    was woken by an event; its clock (a seam it reads once a loop) counts how
    often it looked at the journal meanwhile.
    """
    frames = sim_frames(6, seed=13)
    journal_frames(tmp_path, frames[:3])
    looks = 0

    def clock() -> float:
        nonlocal looks
        looks += 1
        return time.monotonic()

    sessions: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        sessions.append(await asyncpg.connect(migrated))
        return sessions[-1]

    writer, registry = make_writer(
        connect, tmp_path, clock=clock, idle_check_s=3600.0, poll_interval_s=3600.0
    )
    task = asyncio.create_task(writer.run())
    try:
        await until(lambda: writer.caught_up.is_set(), 30, "the first frames committed")
        before = looks
        await asyncio.sleep(1.0)
        assert looks - before <= 1  # the old loop looked 100 times a second
        journal_frames(tmp_path, frames[3:])  # the appender rings the doorbell
        total = n_ticks(frames)
        deadline = time.monotonic() + 10
        while await counts(migrated) != (total, total):
            assert time.monotonic() < deadline, "the append never woke the writer"
            await asyncio.sleep(0.05)
        async with connection(migrated) as admin:
            await admin.execute("SELECT pg_terminate_backend($1)", sessions[-1].get_server_pid())
        await until(lambda: sample(registry, "collector_database_up") == 0, 10, "woken by the lost session")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_restarts_resume_at_the_committed_position(migrated: str, tmp_path: Path) -> None:
    frames = sim_frames(30, seed=9)
    journal_frames(tmp_path, frames[:12])
    await store(migrated, tmp_path)
    journal_frames(tmp_path, frames[12:])  # a new feed process appends after a restart
    await store(migrated, tmp_path)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)


async def test_two_writers_on_one_journal_never_store_a_row_twice(migrated: str, tmp_path: Path) -> None:
    # The writer lock prevents this in the collector; the position fence makes it harmless anyway.
    frames = sim_frames(40, seed=10)
    journal_frames(tmp_path, frames)
    await asyncio.gather(
        store(migrated, tmp_path, max_batch_rows=40), store(migrated, tmp_path, max_batch_rows=40)
    )
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)


async def test_cancelling_mid_write_ends_promptly_and_loses_nothing(migrated: str, tmp_path: Path) -> None:
    frames = sim_frames(60, seed=11)
    journal_frames(tmp_path, frames)
    for attempt in range(8):
        writer, _ = make_writer(migrated, tmp_path, max_batch_rows=200)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(random.Random(attempt).uniform(0.02, 0.4))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "a cancelled writer must end within seconds"
    await store(migrated, tmp_path)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)


def day_with_reconnects(n: int = 1200, seed: int = 21) -> list[bytes]:
    """Live frames with a reconnect snapshot every 100 frames: mostly repeats, some moved on."""
    import time

    from collector.proto import MarketDataFeedV3_pb2 as pb
    from collector.simulator.market import SimMarket, generate_master

    market = SimMarket(generate_master(8), seed=seed)
    modes = dict(
        zip(list(market.instruments)[:40], ["full", "option_greeks", "ltpc", "full"] * 10, strict=True)
    )
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        if i and i % 100 == 0:
            snap = pb.FeedResponse(currentTs=now + i)  # initial_feed: the type is omitted
            for key, mode in modes.items():
                inst = market.tick(key, now + i) if rng.random() < 0.2 else market.instruments[key]
                market.fill(snap.feeds[key], inst, mode)  # type: ignore[arg-type]
            out.append(snap.SerializeToString())
            continue
        msg = pb.FeedResponse(type=pb.live_feed, currentTs=now + i)
        for key in rng.sample(list(modes), 5):
            market.fill(msg.feeds[key], market.tick(key, now + i), modes[key])  # type: ignore[arg-type]
        out.append(msg.SerializeToString())
    return out


async def test_replays_compute_the_same_rows_as_a_live_run(migrated: str, tmp_path: Path) -> None:
    """Snapshot suppression and volume depend on earlier ticks: an interrupted run must agree."""
    payloads = day_with_reconnects()
    live_dir, replay_dir = tmp_path / "live", tmp_path / "replay"
    journal_frames(live_dir, payloads)
    journal_frames(replay_dir, payloads)
    base, name = migrated.rsplit("/", 1)
    other = f"{name}_live"
    async with connection(f"{base}/postgres") as admin:
        await admin.execute(f"CREATE DATABASE {other}")  # not from a template: TSL's job workers use it
        try:
            async with connection(f"{base}/{other}") as conn:
                await migrate(conn)
            # The live run in one go, into its own database.
            registry = await store(f"{base}/{other}", live_dir, max_batch_rows=300)
            # The replayed run is interrupted again and again, with other batch sizes.
            rng = random.Random(3)
            for _ in range(6):
                writer, _ = make_writer(migrated, replay_dir, max_batch_rows=rng.randint(20, 400))
                task = asyncio.create_task(writer.run())
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                task.cancel()
                await asyncio.wait({task}, timeout=10)
            await store(migrated, replay_dir, max_batch_rows=150)
            cols = ", ".join(c for c in TICK_COLUMNS if c != "received_at")
            sql = f"SELECT {cols} FROM ticks ORDER BY instrument_key, time, snapshot"
            live, replayed = await query(f"{base}/{other}", sql), await query(migrated, sql)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")
    assert sample(registry, "collector_duplicates_suppressed_total", {"kind": "snapshot"}) > 100
    assert any(r["snapshot"] for r in live) and any(r["volume"] for r in live)
    assert [tuple(r) for r in replayed] == [tuple(r) for r in live]


async def test_an_undecodable_frame_becomes_a_dead_letter_and_the_rest_is_stored(
    migrated: str, tmp_path: Path
) -> None:
    frames = sim_frames(4, seed=12)
    journal_frames(tmp_path, [frames[0], b"\xff\xfe not protobuf", *frames[1:]])
    registry = await store(migrated, tmp_path)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)
    [dead] = await query(migrated, "SELECT * FROM dead_letters")
    assert dead["table_name"] == "frames" and dead["journal"] and dead["position"] is not None
    assert b"not protobuf".hex() in dead["row_data"]
    assert sample(registry, "collector_decode_errors_total", {"connection": "0"}) == 1


async def test_a_corrupt_journal_record_is_skipped_counted_and_passed(migrated: str, tmp_path: Path) -> None:
    frames = sim_frames(10, seed=13)
    positions = []
    with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
        for f in frames:
            positions.append(j.position)
            j.append(FRAME, f)
    [segment] = segment_paths(tmp_path)
    raw = bytearray(segment.read_bytes())
    raw[positions[4] + HEADER.size + 10] ^= 0xFF  # a bit-flip in the fifth frame
    segment.write_bytes(bytes(raw))
    registry = await store(migrated, tmp_path)
    survivors = frames[:4] + frames[5:]
    total = n_ticks(survivors)
    assert await counts(migrated) == (total, total)
    assert sample(registry, "collector_journal_corrupt_records_total", {"connection": "0"}) == 1
    assert (
        sample(registry, "collector_journal_skipped_bytes_total", {"connection": "0"})
        == positions[5] - positions[4]
    )


async def test_committed_segments_are_deleted(migrated: str, tmp_path: Path) -> None:
    with JournalAppender(tmp_path, journal_options(fsync="never", segment_bytes=64 * 1024)) as j:
        for f in sim_frames(80, seed=14):
            j.append(FRAME, f)
    assert len(segment_paths(tmp_path)) > 3
    await store(migrated, tmp_path)
    assert len(segment_paths(tmp_path)) == 1  # the newest one stays: the feed may append to it
    # What the supervisor reads for its metrics: the newest segment on disk, nothing uncommitted.
    state = progress(tmp_path)
    assert state.disk_bytes == segment_paths(tmp_path)[0].stat().st_size
    assert state.lag_bytes == 0 and state.oldest_uncommitted is None


async def test_a_restart_after_committed_segments_were_deleted_reports_no_corruption(
    migrated: str, tmp_path: Path
) -> None:
    # Once its first segments are committed and deleted, a journal starts past position 0. A new
    # writer (a restart, a reconnect to the database) must not take the deleted, committed bytes for
    # lost ones: that once paged for disk corruption on every third start.
    with JournalAppender(tmp_path, journal_options(fsync="never", segment_bytes=64 * 1024)) as j:
        for f in sim_frames(80, seed=14):
            j.append(FRAME, f)
    await store(migrated, tmp_path)
    assert segment_paths(tmp_path)[0].name != "00000000000000000000.journal"
    for _ in range(2):  # a restart, and another
        with JournalAppender(tmp_path, journal_options(fsync="never")) as j:
            for f in sim_frames(5, seed=15):
                j.append(FRAME, f)
        registry = await store(migrated, tmp_path)
        assert sample(registry, "collector_journal_corrupt_records_total", {"connection": "0"}) == 0
        assert sample(registry, "collector_journal_skipped_bytes_total", {"connection": "0"}) == 0


@pytest.mark.limit(120)
async def test_read_ahead_is_bounded_while_the_database_is_slow(migrated: str, tmp_path: Path) -> None:
    frames = sim_frames(200, seed=15)
    end = journal_frames(tmp_path, frames)
    # Not a `with` block: the lock must go (the connection closed) before the writer is cancelled.
    blocker = await asyncpg.connect(migrated)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("LOCK TABLE ticks IN EXCLUSIVE MODE")  # every COPY waits, reads go on
    writer, _ = make_writer(migrated, tmp_path, max_batch_rows=100, grow_factor=2)
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(1.5)
        # One batch in flight and the next one full (each read takes at most read_bytes):
        # the rest waits in the journal, not in memory.
        assert 0 < writer._reader.position <= 3 * writer.options.read_bytes < end / 2
        await lock.rollback()
        await until(lambda: writer.caught_up.is_set(), 60, "caught up")
    finally:
        await blocker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    total = n_ticks(frames)
    assert await counts(migrated) == (total, total)
