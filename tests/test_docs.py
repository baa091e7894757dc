"""The README documents every setting."""

from __future__ import annotations

from collector.settings import Settings
from tests.conftest import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`COLLECTOR_{n.upper()}`" not in readme]
    assert not missing


def test_readme_names_the_test_command_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`scripts/test`" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
