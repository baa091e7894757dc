"""What the tests read from the documentation: where each fact lives, and the settings table."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.paths import ROOT

DOCS = ROOT / "docs"
# The one document that lists every setting (tests of compose and .env.example read it here).
SETTINGS_DOC = DOCS / "settings.md"
# The alert runbooks: each rule's runbook_url points at a heading here.
RUNBOOKS_DOC = DOCS / "operations.md"
# The pinned and tested versions.
VERSIONS_DOC = DOCS / "compatibility.md"
# What the migrations leave on TimescaleDB with the Timescale License code.
DATA_DOC = DOCS / "data.md"


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


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code (neither holds links or headings)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes for the headings of ``doc`` (lowercase, punctuation dropped, - for spaces)."""
    found: set[str] = set()
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in found:  # a repeated heading gets -1, -2, ...
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def relative_links(doc: Path) -> list[str]:
    """The targets of the links in ``doc`` that point into the repository (not URLs)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text()))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]
