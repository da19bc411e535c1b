"""Every ``outcome`` the service counts in ``atp_forwarded_calls_total`` is one docs/OPERATIONS.md names in the
metric's rows, which dashboards and the "several processes" runbooks are written from: a call naming a
reservation held at another process, answered by it once every other was asked, was counted ``located``, a
value no row named (they said ``ok``, ``error`` and ``redirected``). Read from the source, as
tests/test_log_events_doc.py reads the log events: a located call needs several processes to be provoked."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COUNTING = ("forward.py", "record.py", "streams.py")
"""The modules of ``atp_service/edge`` that count forwarded calls."""


def _counted_outcomes() -> set[str]:
    """The string literals passed as the outcome: ``_counted.labels(method, "ok")``, ``counted(method, "ok")``."""
    outcomes: set[str] = set()
    for name in COUNTING:
        for node in ast.walk(ast.parse((ROOT / "atp_service" / "edge" / name).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and len(node.args) >= 2):
                continue
            counting = node.func.attr == "counted" or (
                node.func.attr == "labels" and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "_counted")
            for outcome in ast.walk(node.args[1]) if counting else ():
                if isinstance(outcome, ast.Constant) and isinstance(outcome.value, str):
                    outcomes.add(outcome.value)
    return outcomes


def test_every_forwarded_calls_outcome_is_named_in_each_row_of_the_metric() -> None:
    outcomes = _counted_outcomes()
    assert {"ok", "error", "redirected"} <= outcomes  # the reading finds them
    rows = [line for line in (ROOT / "docs" / "OPERATIONS.md").read_text().splitlines()
            if line.startswith("| `atp_forwarded_calls_total{method,outcome}`")]
    assert len(rows) == 2  # "What to watch" and "Every metric of the service"
    for row in rows:
        assert not [o for o in sorted(outcomes) if f"`{o}`" not in row], row
