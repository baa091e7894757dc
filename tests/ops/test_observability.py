"""Metrics, rules and dashboards against a running collector, real Prometheus, real TimescaleDB."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from collector.core.batch import Batch
from collector.db.jobs import Jobs
from collector.db.stats import RELATIONS
from collector.metrics import SupervisorMetrics, WriterMetrics
from collector.writer.store import BatchStore
from tests.support.db import Server, connection
from tests.support.grafana import expand
from tests.support.paths import ROOT
from tests.support.stack import Stack
from tests.support.waiting import wait

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "prometheus" / "rules" / "collector.yml"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"


def panels() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield path.name, panel, target


@pytest.fixture(scope="module")
def stack(tsdb: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = "t_" + uuid.uuid4().hex[:12]

    async def admin(sql: str) -> None:
        async with connection(tsdb.dsn) as conn:
            await conn.execute(sql)

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    # With a retention, as a deployment has: the storage panels then show what it is held to.
    s = Stack(tsdb.database(name), tmp_path_factory.mktemp("stack"), env={"COLLECTOR_RETENTION_DAYS": "30"})
    try:
        s.start()
        wait(lambda: s.metric("collector_rows_written_total", table="ticks") > 3000, 90, "ticks")
        # A dropped connection while the market is open leaves a gap behind.
        assert s.sim is not None
        s.call(s.sim.drop(1011))
        wait(lambda: s.metric("collector_rows_written_total", table="feed_gaps") >= 1, 30, "gap")
        s.start_prometheus()
        wait(lambda: s.query('up{job="collector"} == 1'), 30, "Prometheus scraping the collector")
        yield s
    finally:
        s.close()
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


# -- metrics ---------------------------------------------------------------------------


def test_promtool_check_metrics_passes_on_the_real_endpoint(stack: Stack) -> None:
    body = stack.metrics_text()
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_label_takes_instrument_keys_or_secrets(stack: Stack) -> None:
    body = stack.metrics_text()
    assert "NSE_FO|" not in body and "NSE_EQ|" not in body
    assert stack.sim is not None and stack.sim.token not in body
    assert "postgresql://" not in body


# -- rules and dashboards in Prometheus -------------------------------------------------


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for g in groups for rule in g["rules"]]


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}


def promql() -> list[str]:
    exprs = rule_exprs()
    for _, _, target in panels():
        if target["datasource"]["uid"] == "prometheus":
            exprs.append(target["expr"].replace("$__rate_interval", "1m"))
    return exprs


def exported_names(body: str) -> set[str]:
    """Names with samples, and names declared without any (a series present only in trouble,
    such as collector_feed_down_since_timestamp_seconds, is declared all the time)."""
    names = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name, f"{name}_total"} if kind == "counter" else {name}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def test_every_expression_evaluates_and_names_only_exported_metrics(stack: Stack) -> None:
    exported = exported_names(stack.metrics_text()) | recorded() | {"up"}
    for expr in promql():
        stack.query(expr)
        names = set(re.findall(r"\b(collector[_:][a-zA-Z0-9_:]*)", expr))
        unknown = names - exported
        assert not unknown, (expr, unknown)


def test_dashboards_show_data_in_prometheus(stack: Stack) -> None:
    wait(lambda: stack.query("collector:ticks_decoded:rate1m > 0"), 60, "tick rate recorded")
    assert stack.query("collector_feed_connected == 1")
    assert stack.query("collector:connection_market_open == 1")


def collector_panel(title: str) -> dict[str, Any]:
    board = json.loads((ROOT / "grafana" / "dashboards" / "collector.json").read_text())
    return next(p for p in board["panels"] if p["title"] == title)  # type: ignore[no-any-return]


Table = dict[tuple[tuple[str, str], ...], dict[str, float]]


def instant_table(stack: Stack, panel: dict[str, Any]) -> Table:
    """The panel's instant queries, merged on their labels as Grafana's merge transformation does:
    labels -> {refId: value}."""
    table: Table = {}
    for target in panel["targets"]:
        for series in stack.query(target["expr"]):
            row = table.setdefault(tuple(sorted(series["metric"].items())), {})
            row[target["refId"]] = float(series["value"][1])
    return table


def test_the_scheduled_jobs_table_reads_as_one_row_per_job(stack: Stack) -> None:
    jobs = collector_panel("Scheduled jobs")
    wait(lambda: bool(stack.query(jobs["targets"][0]["expr"])), 30, "a job's last success scraped")
    # Failures in the last hour need two scrapes of the counters (just after Prometheus started: one).
    wait(lambda: bool(stack.query(jobs["targets"][1]["expr"])), 30, "two scrapes of the job counters")
    table = instant_table(stack, jobs)
    # One key column, the task, so each job is one row with both columns.
    assert all(len(key) == 1 and key[0][0] == "task" for key in table), table
    rows = {key[0][1]: row for key, row in table.items()}
    assert {"instrument_sync", "candle_refresh", "retention", "backfill", "holiday_sync"} <= set(rows)
    assert all(row["B"] == 0 for row in rows.values()), rows  # failures in the last hour
    # The master was loaded at start-up: minutes ago, not 56.9 years (time() - 0).
    assert 0 <= rows["instrument_sync"]["A"] < 3600, rows
    assert all(row.get("A", 0) < 3600 for row in rows.values()), rows


def test_the_timescaledb_jobs_table_reads_as_one_row_per_job(stack: Stack, tsdb: Server) -> None:
    jobs = collector_panel("TimescaleDB jobs")
    if tsdb.flavour != "tsl":
        # The Apache build has no policies, and migrate leaves no job of ours (ids from 1000 on) to
        # its scheduler: the queries run, and the table lists none of ours.
        ours = [
            series["metric"] for target in jobs["targets"] for series in stack.query(target["expr"])
            if int(series["metric"].get("job_id", "0")) >= 1000
        ]  # fmt: skip
        assert ours == []
        return
    # The candle refresh policies and our own job run as soon as they are created, then every few
    # minutes; retention runs daily.
    ran = {("policy_refresh_continuous_aggregate", relation) for relation in RELATIONS[1:]}
    ran.add(("collector_refresh_late_candles", ""))
    rows: dict[tuple[str, str], dict[str, float]] = {}

    def every_first_run_scraped() -> bool:
        table = instant_table(stack, jobs)
        # The job's labels are the key columns, so each job is one row with every column (a job
        # on no relation has no relation label: Prometheus keeps no empty label).
        assert all(
            {k for k, _ in key} in ({"job_id", "proc", "relation"}, {"job_id", "proc"}) for key in table
        )
        rows.clear()
        rows.update({(dict(key)["proc"], dict(key).get("relation", "")): row for key, row in table.items()})
        assert len(rows) == len(table), table
        # A run in progress has no outcome yet: its "Last run" is empty in that scrape.
        return all("A" in rows.get(job, {}) for job in ran)

    wait(every_first_run_scraped, 120, "every candle job's first run scraped")
    assert ("policy_retention", "ticks") in rows, sorted(rows)
    assert any(proc in ("policy_compression", "policy_columnstore") for proc, _ in rows), sorted(rows)
    for job, row in rows.items():
        # Interval, failures in a row, runs and failures are there for every job, run or not.
        assert {"B", "E", "F", "G"} <= set(row), (job, row)
        assert row["E"] > 0 and row["B"] <= row["G"] <= row["F"], (job, row)
        assert row.get("A", 1) in (0, 1), (job, row)
        if "C" in row:  # seconds since the last success, not an epoch
            assert 0 <= row["C"] < 3600, (job, row)
        if "D" in row:  # the next start is at most an interval ahead (overdue: negative)
            assert row["D"] <= row["E"] + 60, (job, row)
    for job in ran:
        assert rows[job]["F"] >= 1, (job, rows[job])


async def convert_an_old_chunk(dsn: str) -> None:
    """A tick three days old, in a chunk of its own, converted to the columnstore (as the policy
    does with chunks older than two days)."""
    async with connection(dsn) as conn, conn.transaction():
        await conn.execute("CREATE TEMP TABLE old_tick ON COMMIT DROP AS SELECT * FROM ticks LIMIT 1")
        await conn.execute("UPDATE old_tick SET time = time - interval '3 days'")
        await conn.execute("INSERT INTO ticks SELECT * FROM old_tick")
        converted = await conn.fetch(
            "SELECT compress_chunk(c) FROM show_chunks('ticks', older_than => now() - interval '2 days') c"
        )
        assert len(converted) == 1


def test_the_storage_panels_show_every_relation(stack: Stack, tsdb: Server) -> None:
    def series(title: str, ref: str) -> dict[str, float]:
        """The target's series now: their label values, space-separated in label order -> value."""
        [target] = [t for t in collector_panel(title)["targets"] if t["refId"] == ref]
        found = stack.query(target["expr"])
        return {" ".join(v for _, v in sorted(s["metric"].items())): float(s["value"][1]) for s in found}

    relations = set(RELATIONS)
    # The stack holds ticks by now: wait for figures read since (the supervisor may have read the
    # database before the first tick, and reads again only when its figures are 10 s old).
    asked = time.time()
    read = "collector_timescaledb_stats_timestamp_seconds"
    wait(lambda: bool(stack.query(f"{read} > {asked}")), 60, "database figures read after the ticks")
    [age] = series("TimescaleDB figures age", "A").values()
    assert 0 <= age < 60
    size = series("Database size per relation", "A")
    assert set(size) == relations and size["ticks"] > 0, size
    assert set(series("Chunks per relation", "A")) == relations
    assert series("Chunks per relation", "A")["ticks"] >= 1
    assert set(series("Chunks per relation", "B")) == relations
    oldest = series("Oldest chunk age against retention", "A")
    assert 0 <= oldest["ticks"] < 2 * 86_400, oldest  # a day's chunk, begun today or yesterday
    assert series("Oldest chunk age against retention", "B") == {"ticks": 30 * 86_400}
    if tsdb.flavour != "tsl":
        return  # no columnstore on the Apache build
    asyncio.run(convert_an_old_chunk(stack.dsn))
    converted = 'collector_timescaledb_columnstore_bytes{relation="ticks",stage="after"}'
    wait(lambda: bool(stack.query(converted)), 60, "the converted chunk's sizes scraped")
    stored = series("Columnstore: bytes before and after conversion", "A")
    assert set(stored) == {"ticks before", "ticks after"} and stored["ticks after"] > 0, stored
    [ratio] = series("Columnstore: bytes before and after conversion", "B").values()
    assert ratio == pytest.approx(stored["ticks after"] / stored["ticks before"]), (ratio, stored)
    assert series("Chunks per relation", "B")["ticks"] == 1  # read with the sizes, in the same scrape
    assert 2 * 86_400 < series("Oldest chunk age against retention", "A")["ticks"] < 5 * 86_400


# -- SQL panels on TimescaleDB --------------------------------------------------------


def test_dashboards_are_provisionable(stack: Stack) -> None:
    provisioned = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert len(DASHBOARDS) == 3
    uids = set()
    for path in DASHBOARDS:
        text = path.read_text()
        board = json.loads(text)
        assert board["id"] is None and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
        uids.add(board["uid"])
        assert "__inputs" not in board and "${DS_" not in text
        defined = {v["name"] for v in board["templating"]["list"]}
        for var in board["templating"]["list"]:
            assert var.get("datasource", {}).get("uid", "prometheus") in provisioned
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in provisioned, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in provisioned
                query = target.get("rawSql", target.get("expr", ""))
                used = set(re.findall(r"\$(\w+)", query)) - {n for n in re.findall(r"\$(__\w+)", query)}
                assert used <= defined, (path.name, panel["title"], used - defined)
    assert len(uids) == 3


async def add_dead_letter(dsn: str) -> None:
    store = BatchStore(WriterMetrics(CollectorRegistry()))
    async with connection(dsn) as conn:
        row = await conn.fetchrow("SELECT * FROM ticks LIMIT 1")
        from collector.core.pgcopy import tick_row
        from collector.core.records import TICK_COLUMNS, Tick

        tick = Tick(*(row[c] for c in TICK_COLUMNS))._replace(instrument_key="NSE_EQ|\x00")
        journal = f"test-{uuid.uuid4()}"
        await store.load(conn, journal, 99, 0)
        await store.write(conn, Batch(ticks=[tick_row(tick)], journal=journal, start=0, end=1))


def test_every_sql_panel_runs_and_shows_data(stack: Stack, tmp_path: Path) -> None:
    asyncio.run(add_dead_letter(stack.dsn))

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(stack.dsn)

    assert asyncio.run(
        Jobs(connect=connect, metrics=SupervisorMetrics(CollectorRegistry())).refresh_candles()
    )

    async def check() -> None:
        async with connection(stack.dsn) as conn:
            instrument = await conn.fetchval(
                "SELECT c.instrument_key FROM candles_1m c JOIN exchange_bars b ON b.instrument_key = "
                "c.instrument_key AND b.interval = 'I1' AND b.bar_start = c.bucket LIMIT 1"
            )
            assert instrument, "no instrument with both our candles and the exchange's bars"
            end = datetime.now(UTC) + timedelta(minutes=1)
            start = end - timedelta(hours=1)
            for board_name, panel, target in panels():
                if target["datasource"]["uid"] != "timescaledb":
                    continue
                sql = expand(target["rawSql"], start=start, end=end, variables={"instrument": instrument})
                rows = await conn.fetch(sql)
                assert rows, f"{board_name}: {panel['title']} returned no rows"
                if target["format"] == "time_series":
                    times = [r["time"] for r in rows]
                    assert times == sorted(times), panel["title"]
            board = json.loads((ROOT / "grafana" / "dashboards" / "market-data.json").read_text())
            [variable] = board["templating"]["list"]
            values = await conn.fetch(variable["query"])
            assert instrument in {r["__value"] for r in values}

    asyncio.run(check())
