"""The dead letters' codes the docs promise are the codes the reader writes, each with its meaning."""

from __future__ import annotations

import re
from pathlib import Path

from atp_service.intake.dead_letters import CODES

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "OPERATIONS.md"
HEADER = re.compile(r"^\|\s*`_code`\s*\|\s*When\s*\|\s*$")
ROW = re.compile(r"^\|\s*`(?P<code>[A-Z_]+)`\s*\|")


def documented_codes() -> list[str]:
    """The rows of the table headed ``| `_code` | When |`` in docs/OPERATIONS.md."""
    lines = OPERATIONS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if HEADER.match(line))
    codes = []
    for line in lines[start + 2:]:
        row = ROW.match(line)
        if row is None:
            break
        codes.append(row["code"])
    return codes


def test_the_dead_letter_codes_documented_are_the_codes_written() -> None:
    assert documented_codes() == list(CODES)
