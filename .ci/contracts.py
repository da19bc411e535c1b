"""House rules that ruff, mypy and lint-imports cannot say, checked by ``make lint``.

- a module stays under MAX_MODULE_LINES, a function under MAX_FUNCTION_LINES (declarative tables —
  metric and flag declarations — are named in TABLES);
- a shard's ``Ledger`` is touched only by the engine (its actor, and a coordinator holding the
  shards paused): everyone else talks to a shard through its ref;
- in tests/, a helper that sets up, yields once and tears down (a module-level generator with one
  yield, outside any loop) is a context manager, and every context manager tears down in ``finally``
  (or a ``with`` around its yield): a generator iterated by ``async for`` is not resumed when an
  assertion fails in the loop, code after a bare yield is skipped when the block fails, and a service
  left running so hung the test, its event loop unable to close. Fixtures and pytest hooks are left
  out: pytest resumes them after a failure too.

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
    ("client/atp_client/_parser.py", "build_parser"),  # one declaration per flag
}
LEDGER_OWNERS = ("atp_service/engine/",)
LEDGER_ACCESS = re.compile(r"\.ledger\b")
TESTS = "tests"


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


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    """The nodes of ``fn``'s body, not those of the functions and classes defined in it."""
    found, stack = [], list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            found.append(node)
            stack.extend(ast.iter_child_nodes(node))
    return found


def _unguarded(body: list[ast.stmt], guarded: bool = False) -> list[int]:
    """Lines of statements holding a yield that statements follow, outside any ``finally`` or ``with``."""
    found = []
    for i, st in enumerate(body):
        if isinstance(st, ast.Try | ast.TryStar):
            found += _unguarded(st.body, guarded or bool(st.finalbody))
            for block in (*(h.body for h in st.handlers), st.orelse, st.finalbody):
                found += _unguarded(block, guarded)
        elif isinstance(st, ast.With | ast.AsyncWith):
            found += _unguarded(st.body, True)
        elif isinstance(st, ast.If | ast.For | ast.AsyncFor | ast.While):
            found += _unguarded(st.body, guarded) + _unguarded(st.orelse, guarded)
        has_yield = any(isinstance(n, ast.Yield | ast.YieldFrom) for n in [st, *_own_nodes(st)])
        if has_yield and not guarded and i + 1 < len(body):
            found.append(st.lineno)
    return found


def _tears_down(fn: ast.FunctionDef | ast.AsyncFunctionDef, yields: list[ast.AST]) -> bool:
    """Whether ``fn`` runs anything after its yield: statements after it, or a ``finally`` or ``with`` around it."""
    return bool(_unguarded(fn.body)) or any(
        isinstance(n, ast.With | ast.AsyncWith) or (isinstance(n, ast.Try | ast.TryStar) and n.finalbody)
        for n in _own_nodes(fn) for y in yields if y in _own_nodes(n))


def teardowns(path: Path, rel: str) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        decorators = [ast.unparse(d) for d in fn.decorator_list]
        yields = [n for n in _own_nodes(fn) if isinstance(n, ast.Yield | ast.YieldFrom)]
        if not yields or any("fixture" in d or "hookimpl" in d for d in decorators):
            continue  # pytest resumes these after a failure too
        if any("contextmanager" in d for d in decorators):
            found += [f"{rel}:{line}: {fn.name} tears down after a bare yield, skipped when the block fails: "
                      "put the tear-down in finally" for line in _unguarded(fn.body)]
            continue
        loops = [n for n in _own_nodes(fn) if isinstance(n, ast.For | ast.AsyncFor | ast.While)]
        one_shot = len(yields) == 1 and fn in tree.body and not any(yields[0] in _own_nodes(n) for n in loops)
        if one_shot and _tears_down(fn, yields):  # a set-up and tear-down helper, not a stream of items
            found.append(f"{rel}:{fn.lineno}: {fn.name} sets up, yields once and tears down: make it a context "
                         "manager (tear-down in finally); a generator's loop is not resumed when its body fails")
    return found


def main() -> int:
    breaches = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        breaches += sizes(path, rel) + ledger_access(path, rel)
    for path in sorted((ROOT / TESTS).rglob("*.py")):
        breaches += teardowns(path, path.relative_to(ROOT).as_posix())
    for line in breaches:
        print(line)
    if not python_files():
        print("no source files found: the check would pass without checking anything")
        return 1
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
