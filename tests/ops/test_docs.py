"""The documentation against the code: settings, the test command, runbooks, links.

Where each fact lives is named once, in tests/support/docs.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from collector.settings import Settings
from tests.support.docs import DOCS, RUNBOOKS_DOC, SETTINGS_DOC, anchors, relative_links
from tests.support.paths import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def test_every_setting_is_documented() -> None:
    text = SETTINGS_DOC.read_text()
    missing = [n for n in Settings.model_fields if f"`COLLECTOR_{n.upper()}`" not in text]
    assert not missing


def test_readme_names_the_test_command_that_ci_runs() -> None:
    readme = README.read_text()
    assert "`scripts/test`" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short_and_links_every_docs_page() -> None:
    readme = README.read_text()
    assert len(readme.splitlines()) <= 150
    linked = set(relative_links(README))
    assert {f"docs/{page.name}" for page in DOCS.glob("*.md")} <= linked


def test_every_alert_has_a_runbook_entry() -> None:
    runbooks = RUNBOOKS_DOC.read_text()
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "collector.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        name = rule["alert"]
        assert f"#### Alert {name}\n" in runbooks, name
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#alert-{name.lower()}", name
        assert f"alert-{name.lower()}" in anchors(RUNBOOKS_DOC), name
    assert re.search(r"\| The latest prices \|", runbooks)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT.resolve() not in file.parents:
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_name_no_path_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"/var/tmp|/work/|\.\./shared|\.\./\.\.", text)
