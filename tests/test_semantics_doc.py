"""docs/SEMANTICS.md states each rule of the platform's contract once, by its label, and every label
the code, the tests and the docs cite is one it states.

The contract's labels are Q1-Q5 (quantities), R1-R8 (reservations), E1-E11 (facts) and C1-C4
(channels): a rule the page lost, or a label cited that names no rule (a typo), leaves a
reader of a comment or a runbook with nothing to look up.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = {f"{kind}{n}" for kind, last in (("Q", 5), ("R", 8), ("E", 11), ("C", 4)) for n in range(1, last + 1)}
STATED = re.compile(r"^(?:\| (?P<row>Q\d+) \||- \*\*(?P<bullet>[QREC]\d+)\*\* )", re.M)
CITED = re.compile(r"(?<!noqa: )\b[QREC]\d+\b")
SOURCES = ("atp_service", "reservation", "publishers", "client/atp_client", "tests", "benchmarks", "docs")


def test_the_semantics_page_states_each_rule_of_the_contract_once() -> None:
    stated = [m["row"] or m["bullet"] for m in STATED.finditer((ROOT / "docs" / "SEMANTICS.md").read_text())]
    assert sorted(stated) == sorted(CONTRACT)


def test_every_label_cited_names_a_rule_of_the_contract() -> None:
    files = [ROOT / "README.md", *(path for source in SOURCES for path in sorted((ROOT / source).rglob("*"))
                                   if path.suffix in (".py", ".md") and "pb" not in path.parts)]
    strays = {f"{path.relative_to(ROOT)}: {label}" for path in files
              for label in CITED.findall(path.read_text()) if label not in CONTRACT}
    assert sorted(strays) == []
