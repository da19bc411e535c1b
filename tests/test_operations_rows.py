"""docs/OPERATIONS.md's tables stay readable by an operator in the middle of an incident: no row runs past
``MAX_ROW_CHARS``. A row that needs more says what happened and what to do, and links to a section that holds
the rest ("Log events in detail", "Metrics in detail")."""

from __future__ import annotations

from pathlib import Path

MAX_ROW_CHARS = 1_000
"""A row of the widest tables (event, level, fields, when) fits about eight lines of a terminal at this length."""


def long_rows(text: str, limit: int = MAX_ROW_CHARS) -> list[str]:
    """The table rows of ``text`` longer than ``limit``, each as its line number, length and start."""
    return [f"line {number}: {len(line)} characters: {line[:60]}..."
            for number, line in enumerate(text.splitlines(), start=1)
            if line.startswith("|") and len(line) > limit]


def test_no_row_of_the_operations_guide_runs_past_its_bound(project_root: Path) -> None:
    rows = long_rows((project_root / "docs" / "OPERATIONS.md").read_text())
    assert not rows, "rows too long to read at a glance; move the detail to a section of its own:\n" + "\n".join(rows)


def test_a_long_row_is_found_and_a_short_one_is_not() -> None:
    text = "| a | b |\n|---|---|\n| `e` | " + "x" * 20 + " |\nprose " + "y" * 50 + "\n"
    row = "| `e` | " + "x" * 20 + " |"
    assert long_rows(text, limit=20) == [f"line 3: {len(row)} characters: {row}..."]
