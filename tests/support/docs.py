"""The project's documentation pages, and reading one section of a page."""

from __future__ import annotations

import re

from tests.support.paths import ROOT

DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()


def section(text: str, heading: str) -> str:
    """The body of `## heading` in `text`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)
