"""The README documents every setting."""

from __future__ import annotations

from collector.settings import Settings
from tests.support.paths import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`COLLECTOR_{n.upper()}`" not in readme]
    assert not missing


def test_readme_names_the_test_command_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`scripts/test`" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_alert_has_a_runbook_entry() -> None:
    import re

    import yaml

    readme = (ROOT / "README.md").read_text()
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "collector.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
                assert f"#### Alert {rule['alert']}" in readme and anchor == f"alert-{rule['alert'].lower()}"
    assert re.search(r"\| `/latest-ticks` \|", readme)
