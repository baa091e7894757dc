"""The Prometheus config, rules and their unit tests on two promtools, and what Prometheus 3 changed.

promtool runs twice: Debian bookworm's 2.42 (what CI installs) and Debian
trixie's 2.53 (scripts/test installs it in a trixie chroot; run here with that
chroot's own loader and libc). Prometheus 3 (the compose file's image) cannot
run here, so its documented incompatibilities (migration guide, 3.0) are
checked directly: the collector's scrape Content-Type, the ``le`` label
normalisation, left-open range selection, and removed functions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from collector.metrics import FeedMetrics, SupervisorMetrics, WriterMetrics
from collector.supervisor.serving import serve_metrics
from tests.support.paths import ROOT

TRIXIE = Path(os.environ.get("COLLECTOR_PROMTOOL_TRIXIE", "/var/tmp/collector-timescaledb/promtool"))
RULES = ROOT / "prometheus" / "rules" / "collector.yml"
RULE_TESTS = ROOT / "prometheus" / "tests" / "collector_test.yml"
# Debian's package versions: what `promtool --version` must say for each.
PROMTOOLS = {"bookworm": "2.42.", "trixie": "2.53."}


def promtool_command(which: str) -> list[str]:
    if which == "bookworm":
        binary = shutil.which("promtool")
        assert binary, "promtool is required (scripts/test installs Debian's prometheus)"
        return [binary]
    trixie = TRIXIE / "usr" / "bin" / "promtool"
    assert trixie.exists(), f"no trixie promtool at {TRIXIE}: scripts/test installs it"
    # The chroot's loader and libc, so the binary never depends on the host's glibc.
    return [str(TRIXIE / "lib64" / "ld-linux-x86-64.so.2"), "--library-path",
            str(TRIXIE / "lib" / "x86_64-linux-gnu"), str(trixie)]  # fmt: skip


@pytest.fixture(params=list(PROMTOOLS))
def promtool(request: pytest.FixtureRequest) -> Any:
    command = promtool_command(request.param)
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert f"version {PROMTOOLS[request.param]}" in version.stdout + version.stderr, version

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    return run


def test_check_config(promtool: Any) -> None:
    result = promtool("check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_check_rules(promtool: Any) -> None:
    result = promtool("check", "rules", "prometheus/rules/collector.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests(promtool: Any) -> None:
    result = promtool("test", "rules", "prometheus/tests/collector_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
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


# -- Prometheus 3 ------------------------------------------------------------------------


def exposition() -> tuple[set[str], str]:
    """The collector's real /metrics as each kind of process serves it: (content types, bodies)."""
    types: set[str] = set()
    bodies = []
    for make in (
        lambda r: SupervisorMetrics(r, connections=2),
        lambda r: FeedMetrics(r, connection=0),
        lambda r: WriterMetrics(r, connection=0),
    ):
        registry = CollectorRegistry()
        make(registry)
        server = serve_metrics(registry, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                types.add(response.headers["Content-Type"])
                bodies.append(response.read().decode())
        finally:
            server.shutdown()
            server.server_close()
    return types, "\n".join(bodies)


def test_the_scrape_content_type_needs_no_fallback_protocol() -> None:
    # Prometheus 3 fails a scrape whose Content-Type is missing or unknown unless the job sets
    # fallback_scrape_protocol (which promtool 2.42 would reject); the collector's must be valid.
    content_types, body = exposition()
    for content_type in content_types:
        media, *params = (p.strip() for p in content_type.split(";"))
        assert media == "text/plain" and "version=0.0.4" in params, content_type  # PrometheusText0.0.4
    assert "collector_build_info" in body
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            assert re.fullmatch(r"[\w.-]+:\d+", target), f"{target}: Prometheus 3 adds no default port"


LE = re.compile(r'\b(le|quantile)\s*(=|!=|=~|!~)\s*"([^"]*)"')


def normalised(value: str) -> bool:
    """A bucket bound as Prometheus 3 stores it from the text format: a float with a point, or ±Inf."""
    return value in ("+Inf", "-Inf") or bool(re.fullmatch(r"-?\d+\.\d+|-?\d+(\.\d+)?e[+-]?\d+", value))


def test_le_values_are_in_the_form_prometheus_3_stores() -> None:
    # Prometheus 3 normalises le/quantile on ingestion (le="1" becomes le="1.0"): a rule matching
    # le="1" would match nothing, and a unit test feeding le="1" would test series that never exist.
    _, body = exposition()
    exported: dict[str, set[str]] = {}
    for name, value in re.findall(r'^(\w+)_bucket\{[^}]*le="([^"]*)"', body, re.M):
        exported.setdefault(name, set()).add(value)
    assert exported, "the collector exports histograms"
    assert all(normalised(v) for values in exported.values() for v in values), exported
    for _, op, value in LE.findall(RULES.read_text()):
        assert (op in ("=", "!=") and normalised(value)) or op.endswith("~"), value
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in group.get("input_series", []):
            m = re.match(r'(\w+)_bucket\{.*le="([^"]*)"', series["series"])
            if m:
                assert m.group(2) in exported.get(m.group(1), set()), series["series"]


def test_range_selections_survive_left_open_ranges() -> None:
    # Prometheus 3 selects ranges left-open: a range no longer holds the sample exactly at its
    # start. With samples on the scrape grid, each range loses one sample; rate() and friends
    # need two, so every window must span at least 4 scrapes (3 left in the worst case).
    scrape = _seconds(
        yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    )
    text = RULES.read_text()
    windows = re.findall(r"\[(\d+[smhd])(?::[^\]]*)?\]", text)
    assert windows
    for window in windows:
        assert _seconds(window) >= 4 * scrape, window
    # Removed or renamed in 3.0 (holt_winters is double_exponential_smoothing behind a flag).
    assert "holt_winters" not in text
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        assert _seconds(group["interval"]) == scrape, "unit tests sample at the scrape interval"


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]
