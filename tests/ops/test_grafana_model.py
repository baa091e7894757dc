"""Every dashboard against Grafana's own model of the classic format (``grafana-foundation-sdk``).

Grafana 13 exports a v2 format that file provisioning refuses: ours stay classic,
and each must be what Grafana's model of that format accepts. The SQL and PromQL
inside them are checked against real services in tests/test_observability.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.grafana_model import model_problems
from tests.support.paths import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_is_what_grafanas_model_accepts(path: Path) -> None:
    assert model_problems(load(path)) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_stay_in_the_classic_format(path: Path) -> None:
    board = load(path)
    # v2 (Grafana 13's export) is a resource: apiVersion/kind/spec, elements and a layout.
    assert not {"apiVersion", "kind", "spec", "elements", "layout"} & set(board)
    assert isinstance(board["schemaVersion"], int) and isinstance(board["panels"], list)
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    [source] = provider["providers"]
    assert source["type"] == "file"


# What Grafana's model refuses, each a change to a real dashboard: the check must say so.
BOARD = ROOT / "grafana" / "dashboards" / "collector.json"
Change = Callable[[dict[str, Any]], None]


def panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in board["panels"] if p["title"] == title)


CHANGES: list[tuple[str, Change, str]] = [
    (
        "a key the model does not know",
        lambda b: b["panels"][0].update(lgend={}),
        "$.panels[0].lgend: not in Grafana's model of Panel",
    ),
    (
        "a string where a number belongs",
        lambda b: b["panels"][0]["gridPos"].update(x="0"),
        "$.panels[0].gridPos.x: '0' is not int",
    ),
    (
        "a value outside an enum",
        lambda b: b.update(graphTooltip=5),
        "$.graphTooltip: 5 is not one of [0, 1, 2]",
    ),
    (
        "a misspelt Prometheus query field",
        lambda b: b["panels"][1]["targets"][0].update(exprr="up"),
        "$.panels[1].targets[0].exprr: not in Grafana's model of Dataquery",
    ),
    (
        "a transformation without its id",
        lambda b: panel(b, "Scheduled jobs")["transformations"][0].pop("id"),
        "$.panels[9].transformations[0]: 'id' is missing (required by Grafana's model of DataTransformerConfig)",
    ),
    (
        "a table option the table panel does not have",
        lambda b: panel(b, "Scheduled jobs")["options"].update(showHeaders=True),
        "$.panels[9].options.showHeaders: not in Grafana's model of Options",
    ),
    (
        "a field config without its overrides",
        lambda b: panel(b, "Scheduled jobs")["fieldConfig"].pop("overrides"),
        "$.panels[9].fieldConfig: 'overrides' is missing (required by Grafana's model of FieldConfigSource)",
    ),
    (
        "a time series option of the wrong type",
        lambda b: panel(b, "COPY time")["fieldConfig"]["defaults"].update(custom={"lineWidth": "thick"}),
        "$.panels[7].fieldConfig.defaults.custom.lineWidth: 'thick' is not float",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [(c, e) for _, c, e in CHANGES], ids=[n for n, _, _ in CHANGES]
)
def test_the_check_names_what_grafanas_model_refuses(change: Change, expected: str) -> None:
    board = copy.deepcopy(load(BOARD))
    change(board)
    assert model_problems(board) == [expected]


def test_the_scheduled_jobs_are_one_table() -> None:
    """Issue 16: two range queries made two tables behind a drop-down, neither with the job's name."""
    jobs = panel(load(BOARD), "Scheduled jobs")
    assert jobs["type"] == "table"
    # Instant queries in table format, one row per task each, merged into one frame on the task.
    for target in jobs["targets"]:
        assert target["instant"] is True and target["range"] is False and target["format"] == "table"
        assert "by (task)" in target["expr"]
    assert [t["id"] for t in jobs["transformations"]] == ["merge", "organize"]
    renamed = jobs["transformations"][1]["options"]["renameByName"]
    assert renamed["task"] == "Job"
    # Only the age is in seconds; the failures are a count.
    units = {
        o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
        for o in jobs["fieldConfig"]["overrides"]
    }
    assert units[renamed["Value #A"]]["unit"] == "s" and units[renamed["Value #B"]]["unit"] == "none"
    assert "unit" not in jobs["fieldConfig"]["defaults"]
    # A job that never succeeded has no age (not "56.9 years": time() - 0).
    assert "> 0" in jobs["targets"][0]["expr"]


def test_the_timescaledb_jobs_are_one_table() -> None:
    """The database's own jobs, built as the scheduled jobs are: one row per job, every column."""
    jobs = panel(load(BOARD), "TimescaleDB jobs")
    assert jobs["type"] == "table"
    for target in jobs["targets"]:
        assert target["instant"] is True and target["range"] is False and target["format"] == "table"
        assert "by (job_id, proc, relation)" in target["expr"]
    assert [t["id"] for t in jobs["transformations"]] == ["merge", "organize"]
    organize = jobs["transformations"][1]["options"]
    renamed = organize["renameByName"]
    assert {renamed[k] for k in ("proc", "relation", "job_id")} == {"Job", "Relation", "Job id"}
    # Every query has its column, in order, named.
    values = [f"Value #{t['refId']}" for t in jobs["targets"]]
    assert sorted(organize["indexByName"], key=organize["indexByName"].get)[3:] == values
    assert set(values) <= set(renamed)
    units = {
        o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
        for o in jobs["fieldConfig"]["overrides"]
    }
    # Ages and intervals in seconds, counts as whole numbers, the last run as words.
    for column in ("Since last success", "Next start in", "Interval"):
        assert units[column]["unit"] == "s"
    for column in ("Failures in a row", "Runs", "Failures"):
        assert units[column]["unit"] == "none" and units[column]["decimals"] == 0
    [mapping] = units["Last run"]["mappings"]
    assert {k: v["text"] for k, v in mapping["options"].items()} == {"0": "failed", "1": "ok"}
    assert "unit" not in jobs["fieldConfig"]["defaults"]
