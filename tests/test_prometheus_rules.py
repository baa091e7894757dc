"""promtool (Debian's prometheus package) checks the config and rules and runs their unit tests."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (scripts/test installs Debian's prometheus)"
    return subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_check_config() -> None:
    result = promtool("check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_check_rules() -> None:
    result = promtool("check", "rules", "prometheus/rules/collector.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests() -> None:
    result = promtool("test", "rules", "prometheus/tests/collector_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    import yaml

    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "collector.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((ROOT / "prometheus" / "tests" / "collector_test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        assert group.get("interval"), "promtool 2.42 needs interval: in every test group"
        for case in group.get("alert_rule_test", []):
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert alerts == fires == quiet
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
