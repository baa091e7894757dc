"""What the tests read from the documentation: the settings table, in one place."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.paths import ROOT

# The one document that lists every setting (tests of compose and .env.example read it here).
SETTINGS_DOC = ROOT / "README.md"


def settings_table(doc: Path = SETTINGS_DOC) -> dict[str, str]:
    """The settings table: ``{"COLLECTOR_X": default cell}``, one entry per row, in order."""
    rows = re.findall(r"^\| `(COLLECTOR_[A-Z0-9_]+)` \| ([^|]*) \|", doc.read_text(), re.M)
    assert rows, f"no settings table in {doc}"
    table = dict(rows)
    assert len(table) == len(rows), f"a setting listed twice in {doc}"
    return {name: default.strip() for name, default in table.items()}


def settings_paragraph(start: str, doc: Path = SETTINGS_DOC) -> set[str]:
    """The ``COLLECTOR_*`` names in the paragraph of ``doc`` that begins with ``start``."""
    text = doc.read_text()
    at = text.find(start)
    assert at >= 0, f"{doc}: no paragraph beginning {start!r}"
    paragraph = text[at:].split("\n\n", 1)[0]
    return set(re.findall(r"`(COLLECTOR_[A-Z0-9_]+)`", paragraph))
