"""The instrument master: bad input, the truncated-master guard, and a large master.

Parsing is checked on bytes; loading through the real command
(``python -m collector instruments sync``) and ``collector run`` against a
real TimescaleDB. What each test shows is also what docs/settings.md promises
("The instrument master").

``COLLECTOR_MASTER_ROWS`` sizes the large-master test (default 20 000; the
long run is ``COLLECTOR_MASTER_ROWS=1000000 pytest tests/db/test_instruments.py -k large -s``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.core.master import COLUMNS, MAX_BYTES, MasterRejected, judge, parse_master
from collector.core.times import ist_day, ist_time
from collector.db.instruments import publish_master, store_master, sync_master
from collector.db.migrate import MIGRATIONS_DIR, migrate
from collector.metrics import SupervisorMetrics
from collector.simulator.market import generate_master
from tests.support.db import connection, fetch, login_sync
from tests.support.metrics import Samples, sample, scrape, total
from tests.support.paths import ROOT
from tests.support.ports import free_port, wait_port
from tests.support.process import run_cli


def today() -> date:
    """The trading day a sync run now stores its master under (IST)."""
    return ist_day(datetime.now(UTC))


def yesterday() -> date:
    return today() - timedelta(days=1)


@pytest.fixture(autouse=True)
def _not_across_midnight_ist() -> None:
    """Start no test in the last two minutes of an IST day: its syncs would store under two days."""
    now = datetime.now(UTC)
    midnight = ist_time(ist_day(now) + timedelta(days=1))
    left = (midnight - now).total_seconds()
    if left < 120:
        time.sleep(left + 1)


def master(stocks: int = 50) -> list[dict[str, Any]]:
    """A master shaped like Upstox's (278 rows for 50 stocks), without the simulator's extras."""
    rows = generate_master(stocks)
    for row in rows:
        row.pop("_price", None)
    return rows


def gz(obj: Any) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def sync(dsn: str, source: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "instruments", "sync", "--source", source, *args, env={"COLLECTOR_DATABASE_URL": dsn, **env}
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def store(dsn: str, rows: list[dict[str, Any]], day: date) -> None:
    async def go() -> None:
        async with connection(dsn) as conn:
            await store_master(conn, parse_master(json.dumps(rows).encode()), day=day, min_ratio=0.8)

    asyncio.run(go())


def snapshot(dsn: str) -> tuple[Any, ...]:
    """Everything stored about the master, to compare before and after."""
    [row] = fetch(
        dsn,
        "SELECT (SELECT md5(string_agg(i::text, '|' ORDER BY trading_day, instrument_key)) FROM instruments i),"
        " (SELECT string_agg(m::text, '|' ORDER BY trading_day) FROM instrument_masters m),"
        " (SELECT count(*) FROM instruments_current)",
    )
    return tuple(row)


def current(dsn: str) -> tuple[date | None, int]:
    [row] = fetch(dsn, "SELECT max(trading_day) AS day, count(*) AS n FROM instruments_current")
    return row["day"], row["n"]


# -- files refused whole (bytes only) ------------------------------------------------------

GOOD = gz(master())
BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "the file is empty"),
    ("not gzip", b"hello, world\n", "neither gzip nor JSON"),
    ("html error page", b"<html><body>503</body></html>", "neither gzip nor JSON"),
    ("gzip of text", gzip.compress(b"not json at all"), "gzip holding something that is not JSON"),
    ("gzip of nothing", gzip.compress(b""), "the gzip stream holds nothing"),
    ("truncated gzip", GOOD[: len(GOOD) // 2], "the gzip stream ends early"),
    ("corrupt gzip", GOOD[:20] + bytes(b ^ 0x55 for b in GOOD[20:60]) + GOOD[60:], "a broken gzip stream"),
    ("an object", b"{}", "the JSON is an object, not a list"),
    ("null", gz(None), "the JSON is null, not a list"),
    ("a number", b"42", "the JSON is a number, not a list"),
    ("an empty list", b"[]", "an empty list"),
    ("not UTF-8", b'[{"instrument_key": "\xff"}]', "neither gzip nor JSON (not UTF-8 text)"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    ("no usable row", json.dumps([1, "x", {"segment": "NSE_EQ"}]).encode(), "no usable row"),
    (
        "mostly garbage",
        json.dumps(master()[:20] + [{"instrument_key": f"NSE_EQ|X{i}"} for i in range(10)]).encode(),
        "more than 10% of the rows are unusable",
    ),
]


THROUGH_THE_COMMAND = {"empty", "not gzip", "gzip of text", "truncated gzip", "an object", "mostly garbage"}


@pytest.mark.parametrize(("data", "problem"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_file_that_is_not_a_master_is_refused_in_one_line(data: bytes, problem: str) -> None:
    with pytest.raises(MasterRejected) as caught:
        parse_master(data, "/x/complete.json.gz").check()
    message = str(caught.value)
    assert message.startswith(f"/x/complete.json.gz: {problem}"), message
    assert "\n" not in message and message.endswith("nothing was stored")


def test_a_gzip_bomb_is_refused_without_inflating_it_all() -> None:
    # 4 MiB of spaces in one gzip member, then 1024 more members of 1 MiB (a gzip file may
    # hold several); inflating stops at the limit.
    limit = 1 << 20
    assert MAX_BYTES >= 1 << 30  # the real limit: a gigabyte, room for a million-row master
    one = gzip.compress(b" " * (4 * limit), compresslevel=9)
    many = gzip.compress(b"[]") + gzip.compress(b" " * limit) * 1024
    for bomb in (one, many):
        assert len(bomb) < 2 * limit
        with pytest.raises(MasterRejected, match=f"more than {limit} bytes decompressed"):
            parse_master(bomb, max_bytes=limit)
    assert parse_master(gzip.compress(b" [") + gzip.compress(b"1] "), max_bytes=limit).entries == 1


# -- rows skipped and counted --------------------------------------------------------------


def bad_rows() -> list[tuple[str, Any]]:
    """(the reason it must be skipped for, the row), each with a fresh key."""
    base = master()[60]  # an index future: expiry, lot size, underlying and the rest set
    out: list[tuple[str, Any]] = []

    def variant(reason: str, **change: Any) -> None:
        row = {**base, "instrument_key": f"NSE_FO|99{len(out):03d}", **change}
        out.append((reason, {k: v for k, v in row.items() if v is not ...}))

    variant("bad strike_price", strike_price="abc")
    variant("bad expiry", expiry="tomorrow")
    variant("bad expiry", expiry=-5)
    variant("without instrument_key", instrument_key=...)
    variant("without instrument_key", instrument_key="")
    variant("bad instrument_key", instrument_key="INFY")
    variant("bad instrument_key", instrument_key=36708)
    variant("without segment", segment=...)
    variant("bad lot_size", lot_size=10**12)  # beyond the integer column
    variant("bad lot_size", lot_size=True)
    variant("bad lot_size", lot_size=[75])
    variant("bad name", name="NUL\x00BYTE")
    variant("bad name", name="\ud800")  # a lone surrogate: PostgreSQL text cannot hold it
    variant("bad weekly", weekly="yes")
    variant("bad tick_size", tick_size=float("nan"))
    out.append(("not an object", "NSE_FO|1"))
    return out


def test_unusable_rows_are_skipped_and_counted_with_an_example_each() -> None:
    good = master()
    bad = bad_rows()
    data = json.dumps([*good, *(row for _, row in bad), good[7]]).encode()  # and good[7] again
    parsed = parse_master(data, "m.json")
    parsed.check()  # 16 of 294 unusable: under 10%, so accepted
    assert len(parsed.records) == len(good)
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    expected["repeated instrument_key"] = 1
    assert dict(parsed.skipped) == expected
    summary = parsed.summary()
    assert summary.startswith(f"skipped {len(bad) + 1} of {len(good) + len(bad) + 1} rows: ")
    first = len(good) + 1  # rows are numbered from 1, as in the file
    assert f"1 bad strike_price (row {first} NSE_FO|99000: 'abc')" in summary
    assert f"2 bad expiry (row {first + 1} NSE_FO|99001: 'tomorrow')" in summary
    assert f"2 without instrument_key (row {first + 3} " in summary
    repeated = len(good) + len(bad) + 1
    assert (
        f"1 repeated instrument_key (row {repeated} {good[7]['instrument_key']}, first at row 8)" in summary
    )
    assert "\n" not in summary


def test_usable_variants_of_a_field_are_read_not_skipped() -> None:
    row = {**master()[60], "lot_size": "75", "strike_price": "100.5", "expiry": "1795500000000"}
    row.update(exchange_token=36708, weekly=1, minimum_lot=75.0, freeze_quantity=None)
    parsed = parse_master(json.dumps([row]).encode())
    assert not parsed.skipped
    got = dict(zip(COLUMNS, parsed.records[0], strict=True))
    assert got["instrument_key"] == row["instrument_key"]
    assert got["lot_size"] == 75 and got["minimum_lot"] == 75 and got["strike_price"] == 100.5
    assert got["expiry"] == datetime.fromtimestamp(1_795_500_000, UTC)
    assert got["exchange_token"] == "36708" and got["weekly"] is True and got["freeze_quantity"] is None


@pytest.mark.parametrize(
    ("before", "day_rows", "reference_rows", "min_ratio", "force", "status"),
    [
        (None, 1, None, 0.8, False, "accepted"),  # the first master: nothing to compare with
        (None, 79, 100, 0.8, False, "held"),
        (None, 80, 100, 0.8, False, "accepted"),
        (None, 1, 100, 0.0, False, "accepted"),  # the guard turned off
        (None, 1, 100, 0.8, True, "forced"),
        ("held", 100, 100, 0.8, False, "accepted"),  # the rest of the day's master came later
        ("held", 2, 100, 0.8, False, "held"),
        ("accepted", 1, 100, 0.8, False, "accepted"),  # a current day stays current
        ("forced", 1, 100, 0.8, False, "forced"),
    ],
)
def test_the_guard(
    before: Any, day_rows: int, reference_rows: int | None, min_ratio: float, force: bool, status: str
) -> None:
    assert judge(before, day_rows, reference_rows, min_ratio=min_ratio, force=force) == status


# -- through the command, against the database ---------------------------------------------


def test_a_refused_master_exits_2_in_one_line_and_leaves_the_stored_one(
    migrated: str, tmp_path: Path
) -> None:
    first = sync(migrated, write(tmp_path, "good.json.gz", GOOD))
    assert first.returncode == 0, first.stderr
    before = snapshot(migrated)
    assert before[2] == len(master())
    # The command on the cases (every case is parsed above, on bytes).
    for name, data, problem in (c for c in BAD_FILES if c[0] in THROUGH_THE_COMMAND):
        path = write(tmp_path, name.replace(" ", "_"), data)
        result = sync(migrated, path)
        assert result.returncode == 2, (name, result.stderr)
        line = one_line(result.stderr)
        assert line.startswith(f"collector: instrument master refused: {path}: {problem}"), line
        assert line.endswith("; nothing was stored") and result.stdout == "", line
        assert snapshot(migrated) == before, name
    missing = sync(migrated, str(tmp_path / "nowhere.json.gz"))
    assert missing.returncode == 2
    assert "cannot read it: No such file or directory" in one_line(missing.stderr)
    assert snapshot(migrated) == before


def test_a_few_bad_rows_and_a_repeated_key_are_stored_around_and_reported(
    migrated: str, tmp_path: Path
) -> None:
    good = master()
    rows = [*good, *(row for _, row in bad_rows()), good[0]]  # the same key twice: no CardinalityViolation
    result = sync(migrated, write(tmp_path, "some-bad.json", json.dumps(rows).encode()))
    assert result.returncode == 0, result.stderr
    line = one_line(result.stdout)
    assert line.startswith(
        f"stored {len(good)} rows for {today()}, current; skipped 17 of {len(rows)} rows: "
    )
    assert "2 without instrument_key (row" in line and "1 repeated instrument_key" in line
    assert current(migrated) == (today(), len(good))
    [m] = fetch(migrated, "SELECT status, row_count, skipped_rows FROM instrument_masters")
    assert tuple(m) == ("accepted", len(good), 17)


def test_a_mostly_garbage_master_is_refused_unless_forced(migrated: str, tmp_path: Path) -> None:
    rows = master()[:20] + [
        {"instrument_key": f"NSE_EQ|X{i}", "segment": "NSE_EQ", "lot_size": "x"} for i in range(5)
    ]
    path = write(tmp_path, "garbage.json", json.dumps(rows).encode())
    refused = sync(migrated, path)
    assert refused.returncode == 2
    assert "more than 10% of the rows are unusable" in one_line(refused.stderr)
    assert "5 bad lot_size (row 21 NSE_EQ|X0: 'x')" in refused.stderr
    assert current(migrated) == (None, 0)
    forced = sync(migrated, path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert one_line(forced.stdout).startswith(f"stored 20 rows for {today()}, current, accepted with --force")
    assert current(migrated) == (today(), 20)


def test_the_guard_holds_back_a_truncated_master_of_a_new_day(migrated: str, tmp_path: Path) -> None:
    full = master()
    store(migrated, full, yesterday())
    one = write(tmp_path, "one.json", json.dumps(full[:1]).encode())

    held = sync(migrated, one)
    assert held.returncode == 2
    line = one_line(held.stderr)
    assert line == (
        f"collector: instrument master held back: {today()} has 1 row (from {one}), fewer than 80% of the "
        f"{len(full)} rows of {yesterday()} (COLLECTOR_INSTRUMENTS_MIN_RATIO); stored but not current: the "
        f"master of {yesterday()} stays in force; `collector instruments sync --force` accepts it"
    )
    assert current(migrated) == (yesterday(), len(full))  # the universe is resolved from this view
    days = {
        r["trading_day"]: (r["status"], r["row_count"])
        for r in fetch(migrated, "SELECT * FROM instrument_masters")
    }
    assert days == {yesterday(): ("accepted", len(full)), today(): ("held", 1)}

    # The complete master published later that day: the day grows past the ratio and becomes current.
    later = sync(migrated, write(tmp_path, "full.json.gz", gz(full)))
    assert later.returncode == 0, later.stderr
    assert current(migrated) == (today(), len(full))


def test_the_guards_ratio_is_a_setting(migrated: str, tmp_path: Path) -> None:
    full = master()
    store(migrated, full, yesterday())
    small = write(tmp_path, "small.json", json.dumps(full[:200]).encode())  # 72% of yesterday
    assert sync(migrated, small).returncode == 2
    assert current(migrated) == (yesterday(), len(full))
    # A lower ratio lets it through...
    relaxed = sync(migrated, small, COLLECTOR_INSTRUMENTS_MIN_RATIO="0.7")
    assert relaxed.returncode == 0, relaxed.stderr
    assert current(migrated) == (today(), 200)


def test_force_makes_a_held_master_current(migrated: str, tmp_path: Path) -> None:
    full = master()
    store(migrated, full, yesterday())
    one = write(tmp_path, "one.json", json.dumps(full[:1]).encode())
    assert sync(migrated, one).returncode == 2
    forced = sync(migrated, one, "--force")
    assert forced.returncode == 0, forced.stderr
    assert one_line(forced.stdout) == f"stored 1 row for {today()}, current, accepted with --force"
    assert current(migrated) == (today(), 1)
    [m] = fetch(
        migrated,
        "SELECT status, accepted_at IS NOT NULL AS accepted FROM instrument_masters WHERE trading_day = $1",
        today(),
    )
    assert tuple(m) == ("forced", True)


def test_migration_007_keeps_the_current_day_of_an_existing_database(database: str, tmp_path: Path) -> None:
    # A database that stored masters before the guard existed.
    before_guard = tmp_path / "migrations"
    before_guard.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:3]) < 7:
            shutil.copy(path, before_guard / path.name)

    async def go() -> None:
        async with connection(database) as conn:
            await migrate(conn, before_guard)
            for day, n in ((yesterday() - timedelta(days=1), 5), (yesterday(), 7)):
                await conn.executemany(
                    "INSERT INTO instruments (trading_day, instrument_key, segment) VALUES ($1, $2, 'NSE_EQ')",
                    [(day, f"NSE_EQ|K{i}") for i in range(n)],
                )
            assert 7 in await migrate(conn)

    asyncio.run(go())
    assert current(database) == (yesterday(), 7)
    rows = fetch(database, "SELECT trading_day, status, row_count FROM instrument_masters ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        (yesterday() - timedelta(days=1), "accepted", 5),
        (yesterday(), "accepted", 7),
    ]


def test_the_writer_role_loads_and_judges_masters_and_the_reader_cannot(
    migrated: str, tmp_path: Path
) -> None:
    full = master()
    store(migrated, full, yesterday())
    one = write(tmp_path, "one.json", json.dumps(full[:1]).encode())
    with login_sync(migrated, "collector_writer") as writer:
        assert sync(writer, one).returncode == 2  # held: the writer may read and write instrument_masters
        assert sync(writer, one, "--force").returncode == 0
    with login_sync(migrated, "collector_reader") as reader:
        denied = sync(reader, write(tmp_path, "full.json.gz", gz(full)))
        assert denied.returncode == 1 and "permission denied" in one_line(denied.stderr)
        assert fetch(reader, "SELECT count(*) FROM instrument_masters")[0][0] == 2


# -- the supervisor ------------------------------------------------------------------------


async def test_the_supervisors_sync_logs_counts_and_keeps_the_master_in_force(
    migrated: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(registry, connections=1)
    full = master()
    rejected = "collector_instrument_master_rejected"
    async with connection(migrated) as conn:
        await store_master(conn, parse_master(gz(full)), day=yesterday(), min_ratio=0.8)
        empty = write(tmp_path, "empty.json.gz", b"")
        assert await sync_master(conn, empty, min_ratio=0.8, metrics=metrics) is None
        assert sample(registry, rejected, {"reason": "unreadable"}) == 1
        garbage = write(tmp_path, "garbage.json", json.dumps([{"instrument_key": "NSE_EQ|X"}] * 3).encode())
        assert await sync_master(conn, garbage, min_ratio=0.8, metrics=metrics) is None
        assert sample(registry, rejected, {"reason": "unreadable"}) == 0
        assert sample(registry, rejected, {"reason": "bad_rows"}) == 1
        one = write(tmp_path, "one.json", json.dumps(full[:1]).encode())
        load = await sync_master(conn, one, min_ratio=0.8, metrics=metrics)
        assert load is not None and load.status == "held"
        assert sample(registry, rejected, {"reason": "bad_rows"}) == 0
        await publish_master(
            conn, metrics, current_rows=len(await conn.fetch("SELECT 1 FROM instruments_current"))
        )
        assert sample(registry, rejected, {"reason": "held"}) == 1
        assert sample(registry, "collector_instrument_master_rows") == len(full)
        await store_master(conn, parse_master(gz(full[:1])), min_ratio=0.8, force=True)
        await publish_master(conn, metrics, current_rows=1)
        assert sample(registry, rejected, {"reason": "held"}) == 0


def metrics(port: int) -> Samples:
    return scrape(f"http://127.0.0.1:{port}/metrics")


def start_run(dsn: str, tmp_path: Path, instruments_url: str) -> tuple[subprocess.Popen[str], int, Path]:
    port = free_port()
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        "COLLECTOR_DATABASE_URL": dsn,
        "COLLECTOR_UPSTOX_API_URL": f"http://127.0.0.1:{free_port()}",  # nobody there: feeds back off
        "COLLECTOR_UPSTOX_TOKEN": "t",
        "COLLECTOR_INSTRUMENTS_URL": instruments_url,
        "COLLECTOR_UNIVERSE": json.dumps([{"mode": "ltpc", "segments": ["NSE_EQ"]}]),
        "COLLECTOR_CONNECTIONS": "1",
        "COLLECTOR_JOURNAL_DIR": str(tmp_path / "journal"),
        "COLLECTOR_METRICS_PORT": str(port),
    }
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "run"], cwd=ROOT, env=env, stderr=f, text=True
        )
    wait_port(port)
    return proc, port, log


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_keeps_the_previous_universe_while_a_new_master_is_held(migrated: str, tmp_path: Path) -> None:
    full = master()
    store(migrated, full, yesterday())
    store(migrated, full[:1], today())  # the 06:15 download was cut short: held
    proc, port, log = start_run(migrated, tmp_path, str(tmp_path / "unused.json.gz"))
    try:
        deadline = time.monotonic() + 30
        while total(m := metrics(port), "collector_universe_keys", mode="ltpc") == 0:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        equities = sum(1 for r in full if r["segment"] == "NSE_EQ")
        assert (
            total(m, "collector_universe_keys", mode="ltpc") == equities
        )  # yesterday's, not today's one row
        assert total(m, "collector_instrument_master_rejected", reason="held") == 1
        assert total(m, "collector_instrument_master_rows") == len(full)
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]


def test_a_restart_reports_the_sync_that_loaded_the_master_in_force(migrated: str, tmp_path: Path) -> None:
    """Issue 16: after every start the dashboard said the last instrument sync was 56.9 years ago."""
    store(migrated, master(), yesterday())
    loaded = datetime(2026, 1, 2, 0, 45, tzinfo=UTC)  # not "now": the time the master in force was loaded
    fetch(migrated, "UPDATE instrument_masters SET loaded_at = $1", loaded)
    proc, port, log = start_run(migrated, tmp_path, str(tmp_path / "unused.json.gz"))
    try:
        deadline = time.monotonic() + 30
        while total(m := metrics(port), "collector_universe_keys", mode="ltpc") == 0:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        last_success = total(m, "collector_job_last_success_timestamp_seconds", task="instrument_sync")
        assert last_success == loaded.timestamp()
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]


def test_run_starts_and_reports_when_the_first_master_is_refused(migrated: str, tmp_path: Path) -> None:
    proc, port, log = start_run(migrated, tmp_path, write(tmp_path, "empty.json.gz", b""))
    try:
        deadline = time.monotonic() + 30
        while total(metrics(port), "collector_instrument_master_rejected", reason="unreadable") != 1:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    text = log.read_text().split("signal received")[0]  # what shutdown logs is not this test's concern
    assert "Traceback" not in text
    refused = [line for line in text.splitlines() if "instrument master refused" in line]
    assert len(refused) == 1 and refused[0].endswith(
        f"instrument master refused; the master in force (if any) stays: {tmp_path}/empty.json.gz: "
        "the file is empty; nothing was stored"
    ), text


# -- a large master ------------------------------------------------------------------------


def large_master(n: int) -> list[dict[str, Any]]:
    template = master()[60]
    return [
        {**template, "instrument_key": f"NSE_FO|{100000 + i}", "exchange_token": str(100000 + i),
         "strike_price": float(i % 5000), "trading_symbol": f"SYM{i} FUT"}
        for i in range(n)
    ]  # fmt: skip


def test_a_large_master_syncs_and_resyncs(migrated: str, tmp_path: Path) -> None:
    n = int(os.environ.get("COLLECTOR_MASTER_ROWS", "20000"))
    path = write(tmp_path, "large.json.gz", gz(large_master(n)))
    timings = []
    for _ in range(2):  # the second time every row is an update
        started = time.perf_counter()
        result = sync(migrated, path)
        timings.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
        assert one_line(result.stdout) == f"stored {n} rows for {today()}, current"
    assert current(migrated) == (today(), n)
    size = os.path.getsize(path)
    print(f"instrument master: {n} rows ({size / 1e6:.1f} MB gzipped) synced in {timings[0]:.1f} s, "
          f"re-synced in {timings[1]:.1f} s")  # fmt: skip
