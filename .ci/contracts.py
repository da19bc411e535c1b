"""House rules that ruff, mypy and lint-imports cannot say, checked by ``make lint``.

- a module stays under MAX_MODULE_LINES, a function under MAX_FUNCTION_LINES (declarative tables —
  metric and flag declarations — are named in TABLES);
- a shard's ``Ledger`` is touched only by the engine (its actor, and a coordinator holding the
  shards paused): everyone else talks to a shard through its ref.

Prints one line per breach and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("atp_service", "reservation", "publishers", "client/atp_client")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
TABLES = {
    ("atp_service/metrics.py", "__init__"),  # one declaration per metric
    ("publishers/_metrics.py", "__init__"),  # one declaration per metric
    ("client/atp_client/ctl.py", "build_parser"),  # one declaration per flag
}
LEDGER_OWNERS = ("atp_service/engine/",)
LEDGER_ACCESS = re.compile(r"\.ledger\b")


def python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "/pb/" not in p.as_posix())


def sizes(path: Path, rel: str) -> list[str]:
    source = path.read_text()
    found = []
    lines = source.count("\n")
    if lines > MAX_MODULE_LINES:
        found.append(f"{rel}: {lines} lines (limit {MAX_MODULE_LINES}): split it")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (rel, node.name) not in TABLES:
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{rel}:{node.lineno}: {node.name} is {length} lines (limit {MAX_FUNCTION_LINES})")
    return found


def ledger_access(path: Path, rel: str) -> list[str]:
    if rel.startswith(LEDGER_OWNERS) or rel.startswith("reservation/"):
        return []
    return [f"{rel}:{n}: reaches into a shard's ledger; use the shard's ref (ShardActor) instead"
            for n, line in enumerate(path.read_text().splitlines(), 1) if LEDGER_ACCESS.search(line)]


def main() -> int:
    breaches = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        breaches += sizes(path, rel) + ledger_access(path, rel)
    for line in breaches:
        print(line)
    if not python_files():
        print("no source files found: the check would pass without checking anything")
        return 1
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
