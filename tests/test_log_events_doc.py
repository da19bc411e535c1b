"""The log events the docs promise are the events the service, the publisher and the client log.

docs/OPERATIONS.md's table of log events (header ``| `event` | Level | Fields | When |``) is what an
operator writes log alerts and pipeline parsers from: every ``event`` the code logs has a row there,
at the level it is logged at and with the fields it carries, and every row names an event the code
still logs. The events are read from the source (a failure, a lost lease or a second stop signal
cannot all be provoked in a test), in the four ways the code gives a line its ``event``:

- a dict literal with an ``"event"`` key, passed as ``extra=`` (directly or through a variable that
  may get more fields, ``fields["left_out"] = ...``);
- a helper returning such a dict with the event's name as a parameter (``Holding._event(name, **more)``):
  its calls name the event;
- ``RateLimitedLog.log(message, event=..., **fields)`` (``atp_service/edge/ratelog.py``), which adds
  ``left_out`` itself;
- ``EveryInterval.fields(event=..., **fields)`` (``atp_service/logs.py``), which adds ``left_out`` too: its
  result is the ``extra=`` of a line (directly or through a variable), whose level it is logged at.

An ``event`` this test cannot read as a string literal fails it rather than being skipped.
"""

from __future__ import annotations

import ast
import gc
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCES = ("atp_service", "publishers", "client/atp_client")
TABLE_HEADER = re.compile(r"^\|\s*`event`\s*\|\s*Level\s*\|\s*Fields\s*\|\s*When\s*\|\s*$")
LEVEL_OF_METHOD = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR", "exception": "ERROR",
                   "critical": "CRITICAL"}
LEVELS = frozenset(LEVEL_OF_METHOD.values())
RATE_LIMITED_FIELDS = frozenset({"left_out"})
"""Added by ``RateLimitedLog.log`` and ``EveryInterval.fields`` to the line after some were left out."""


@dataclass(frozen=True)
class Emitted:
    event: str
    level: str | None
    """None where the call does not say (``RateLimitedLog``'s level is its constructor's)."""
    fields: frozenset[str]
    where: str


@dataclass(frozen=True)
class Builder:
    """A function returning an event's fields, the event's name one of its parameters."""

    index: int
    """Of that parameter among the positional ones a call passes (``self`` left out)."""
    param: str
    fields: frozenset[str]


@dataclass
class Found:
    emitted: list[Emitted] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _event_value(node: ast.Dict) -> ast.expr | None:
    return next((value for key, value in zip(node.keys, node.values, strict=True) if _str(key) == "event"), None)


def _keys(node: ast.Dict) -> frozenset[str]:
    return frozenset(k for key in node.keys if (k := _str(key)) is not None) - {"event"}


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in (*func.args.posonlyargs, *func.args.args) if a.arg not in ("self", "cls")]


def providers(trees: dict[str, ast.Module]) -> dict[str, frozenset[str]]:
    """Functions whose every ``return`` is a dict literal with literal keys (``step_said``): the fields
    a line spreads from one of their calls (``**step_said(request)``)."""
    found: dict[str, frozenset[str]] = {}
    for tree in trees.values():
        for func in _functions(tree):
            returned = [node.value for node in ast.walk(func) if isinstance(node, ast.Return)]
            if returned and all(isinstance(value, ast.Dict) and None not in value.keys and _event_value(value) is None
                                for value in returned):
                found[func.name] = frozenset().union(*(_keys(value) for value in returned))  # type: ignore[arg-type]
    return found


def builders(trees: dict[str, ast.Module]) -> dict[str, Builder]:
    found: dict[str, Builder] = {}
    for tree in trees.values():
        for func in _functions(tree):
            for node in ast.walk(func):
                value = _event_value(node) if isinstance(node, ast.Dict) else None
                if isinstance(value, ast.Name) and value.id in _params(func):
                    found[func.name] = Builder(_params(func).index(value.id), value.id, _keys(node))
    return found


class Module:
    """One source file's events."""

    def __init__(self, where: str, tree: ast.Module, made_by: dict[str, Builder], provided: dict[str, frozenset[str]],
                 found: Found) -> None:
        self.where, self.made_by, self.provided, self.found = where, made_by, provided, found
        self.parent: dict[ast.AST, ast.AST] = {child: node for node in ast.walk(tree)
                                               for child in ast.iter_child_nodes(node)}

    def _at(self, node: ast.AST) -> str:
        return f"{self.where}:{getattr(node, 'lineno', '?')}"

    def _scope(self, node: ast.AST) -> ast.AST:
        while node in self.parent and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node = self.parent[node]
        return node

    def _level(self, call: ast.Call) -> str | None:
        return LEVEL_OF_METHOD.get(_name(call.func) or "")

    def _logged(self, node: ast.expr) -> tuple[str | None, frozenset[str]]:
        """The level of the call ``node`` is the ``extra=`` of, and the fields added to it on the way
        (``fields["left_out"] = ...`` where it is first held in a variable)."""
        up = self.parent.get(node)
        if isinstance(up, ast.keyword) and up.arg == "extra" and isinstance(self.parent[up], ast.Call):
            return self._level(self.parent[up]), frozenset()  # type: ignore[arg-type]
        if not (isinstance(up, ast.Assign | ast.AnnAssign) and up.value is node):
            return None, frozenset()
        target = up.targets[0] if isinstance(up, ast.Assign) else up.target
        name = target.id if isinstance(target, ast.Name) else None
        level, more = None, set[str]()
        for other in ast.walk(self._scope(up)):
            if isinstance(other, ast.Call) and any(
                    k.arg == "extra" and isinstance(k.value, ast.Name) and k.value.id == name for k in other.keywords):
                level = self._level(other)
            elif (isinstance(other, ast.Subscript) and isinstance(other.ctx, ast.Store)
                  and isinstance(other.value, ast.Name) and other.value.id == name and _str(other.slice)):
                more.add(_str(other.slice))  # type: ignore[arg-type]
        return level, frozenset(more)

    def _add(self, event: ast.expr | None, level: str | None, fields: frozenset[str], node: ast.AST) -> None:
        name = _str(event)
        if name is None:
            self.found.problems.append(f"{self._at(node)}: an event that is not a string literal")
        else:
            self.found.emitted.append(Emitted(name, level, fields, self._at(node)))

    def dict_(self, node: ast.Dict) -> None:
        value = _event_value(node)
        if value is None:
            return
        scope = self._scope(node)
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef) and scope.name in self.made_by \
                and isinstance(value, ast.Name) and value.id == self.made_by[scope.name].param:
            return  # a builder: its calls name the event
        spread = set[str]()
        for key, part in zip(node.keys, node.values, strict=True):
            if key is None:
                spread |= self._spread(part, scope)
        level, more = self._logged(node)
        self._add(value, level, _keys(node) | spread | more, node)

    def _spread(self, part: ast.expr, scope: ast.AST) -> frozenset[str]:
        """The fields of ``**part``: a provider's call, or a variable assigned one in the same function."""
        if isinstance(part, ast.Name):
            part = next((node.value for node in ast.walk(scope) if isinstance(node, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == part.id for t in node.targets)), part)
        keys = self.provided.get(_name(part.func) or "") if isinstance(part, ast.Call) else None
        if keys is None:
            self.found.problems.append(f"{self._at(part)}: an event's fields spread (**) from what is not read here")
        return keys or frozenset()

    def call(self, node: ast.Call) -> None:
        name = _name(node.func)
        builder = self.made_by.get(name or "")
        if builder is not None:
            given = {k.arg: k.value for k in node.keywords if k.arg is not None}
            event = node.args[builder.index] if len(node.args) > builder.index else given.pop(builder.param, None)
            level, more = self._logged(node)
            self._add(event, level, builder.fields | (given.keys() - {builder.param}) | more, node)
        elif name == "log" and any(k.arg == "event" for k in node.keywords):  # RateLimitedLog.log
            given = {k.arg: k.value for k in node.keywords if k.arg is not None}
            self._add(given.pop("event"), None, frozenset(given) | RATE_LIMITED_FIELDS, node)
        elif name == "fields" and any(k.arg == "event" for k in node.keywords):  # EveryInterval.fields
            given = {k.arg: k.value for k in node.keywords if k.arg is not None}
            level, more = self._logged(node)
            problems = self.found.problems
            if any(k.arg is None for k in node.keywords):
                problems.append(f"{self._at(node)}: an event's fields spread (**) from what is not read here")
            if level is None:
                problems.append(f"{self._at(node)}: an event's fields not read as a line's extra=")
            self._add(given.pop("event"), level, frozenset(given) | RATE_LIMITED_FIELDS | more, node)


def parsed(paths: list[Path], root: Path) -> dict[str, ast.Module]:
    """Each of ``paths`` parsed with the garbage collector held off (what an earlier test left collected
    first): a finalizer that raises while a tree is built (a closed event loop's, a channel's) fails
    CPython 3.11's AST construction, reported as "AST constructor recursion depth mismatch" (SystemError;
    python/cpython#106905)."""
    gc.collect()
    gc.disable()
    try:
        return {str(path.relative_to(root)): ast.parse(path.read_text(), str(path)) for path in paths}
    finally:
        gc.enable()


def logged(root: Path) -> Found:
    """Every event the code logs, with where, at which level and with which fields."""
    trees = parsed([path for source in SOURCES for path in sorted((root / source).rglob("*.py"))], root)
    found, made_by, provided = Found(), builders(trees), providers(trees)
    for where, tree in trees.items():
        module = Module(where, tree, made_by, provided, found)
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                module.dict_(node)
            elif isinstance(node, ast.Call):
                module.call(node)
    return found


@dataclass(frozen=True)
class Row:
    event: str
    levels: frozenset[str]
    fields: frozenset[str]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def _field_names(cell: str) -> frozenset[str]:
    """The code spans of a Fields cell outside parentheses (``why`` (``shard_failed``): a value of it)."""
    while (shorter := re.sub(r"\([^()]*\)", "", cell)) != cell:
        cell = shorter
    return frozenset(re.findall(r"`([a-z_][a-z0-9_]*)`", cell))


def documented(text: str) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    problems: list[str] = []
    lines = text.splitlines()
    headers = [at for at, line in enumerate(lines) if TABLE_HEADER.match(line)]
    if len(headers) != 1:
        return [], [f"{len(headers)} tables of log events (header | `event` | Level | Fields | When |), not one"]
    for row in lines[headers[0] + 2:]:
        if not row.startswith("|"):
            break
        cells = _cells(row)
        m = re.fullmatch(r"`([a-z_][a-z0-9_]*)`", cells[0]) if len(cells) == 4 else None
        levels = frozenset(re.findall(r"[A-Z]+", cells[1])) if m else frozenset()
        if m is None or not levels or not levels <= LEVELS:
            problems.append(f"a row that names no single event and its level: {row}")
            continue
        rows.append(Row(m[1], levels, _field_names(cells[2])))
    return rows, problems


def differences(rows: list[Row], emitted: list[Emitted]) -> list[str]:
    doc_levels, doc_fields = defaultdict(set), defaultdict(set)
    for row in rows:
        doc_levels[row.event] |= row.levels
        doc_fields[row.event] |= row.fields
    sites, fields = defaultdict(list), defaultdict(set)
    for line in emitted:
        sites[line.event].append(line)
        fields[line.event] |= line.fields
    problems = [f"{event}: documented but logged nowhere" for event in sorted(doc_levels.keys() - sites.keys())]
    for event in sorted(sites):
        where = ", ".join(line.where for line in sites[event])
        if event not in doc_levels:
            problems.append(f"{event}: logged ({where}) but not in the table")
            continue
        problems += [f"{event}: logged at {line.level} ({line.where}), documented at {sorted(doc_levels[event])}"
                     for line in sites[event] if line.level is not None and line.level not in doc_levels[event]]
        if fields[event] != doc_fields[event]:
            problems.append(f"{event}: logged with fields {sorted(fields[event])} ({where}), "
                            f"documented with {sorted(doc_fields[event])}")
    return problems


def test_every_logged_event_is_in_the_table_and_every_row_is_logged(project_root: Path) -> None:
    found = logged(project_root)
    rows, problems = documented((project_root / "docs" / "OPERATIONS.md").read_text())
    problems += found.problems + differences(rows, found.emitted)
    assert not problems, "docs/OPERATIONS.md's log events and the code differ:\n" + "\n".join(problems)


def test_the_reading_of_the_code_finds_each_way_an_event_is_logged(project_root: Path) -> None:
    """The reader above is not blind: one event of each shape is found, with its level and fields."""
    by_event = {(line.event, line.level): line for line in logged(project_root).emitted}
    assert by_event["publisher_not_replicated", "WARNING"].fields == {"channel", "left_out"}  # through a variable
    assert by_event["append_failed", "WARNING"].fields == {"shard", "entry", "reason", "error", "left_out"}  # .fields
    assert by_event["publisher_batch_split", "WARNING"].fields == {"channel", "updates", "reason", "left_out"}
    assert by_event["publisher_lease_lost", "WARNING"].fields == {"channel", "group", "why"}  # a builder
    assert by_event["auth_denied", None].fields >= {"rpc", "caller", "left_out"}  # RateLimitedLog
    assert by_event["ready", "INFO"].fields == {"grpc", "metrics_port"}  # a literal extra=
    assert by_event["peer_step_failed", "WARNING"].fields >= {"peer", "step", "reservation_id"}  # **step_said()


def test_an_event_the_reading_cannot_tell_fails_rather_than_being_skipped(tmp_path: Path) -> None:
    (tmp_path / "atp_service").mkdir()
    (tmp_path / "atp_service" / "x.py").write_text(
        "def f(log, more):\n"
        "    log.info('a', extra={'event': NAME})\n"
        "    log.info('b', extra={'event': 'b', **more})\n"
        "    log.warning('c', extra={'event': 'c', 'k': 1})\n")
    found = logged(tmp_path)
    assert [p.split(": ", 1)[0] for p in found.problems] == ["atp_service/x.py:2", "atp_service/x.py:3"]
    assert {(line.event, line.level, line.fields) for line in found.emitted} == {
        ("b", "INFO", frozenset()), ("c", "WARNING", frozenset({"k"}))}


def test_a_field_the_table_leaves_out_fails_it_in_each_way_a_line_is_given_its_fields(tmp_path: Path) -> None:
    """The reading is not blind to a field the docs forget, whether the line's fields are a dict literal (one added
    through its variable) or ``EveryInterval.fields``'s keywords (``left_out`` added by it); nor to the level of a
    line whose extra the latter is, or to one whose extra it is not read as."""
    (tmp_path / "atp_service").mkdir()
    (tmp_path / "atp_service" / "x.py").write_text(
        "def f(log, lines, n):\n"
        "    fields = {'event': 'literal', 'k': 1}\n"
        "    if n:\n"
        "        fields['left_out'] = n\n"
        "    log.warning('a', extra=fields)\n"
        "    said = lines.fields(event='keywords', k=1)\n"
        "    if said is not None:\n"
        "        log.warning('b', extra=said)\n"
        "    log.info('c', extra=lines.fields(event='direct', k=1))\n"
        "    lines.fields(event='unlogged', k=1)\n"
        "    log.info('d', extra=lines.fields(event='spread', **n))\n")
    found = logged(tmp_path)
    assert [p.split(": ", 1) for p in found.problems] == [
        ["atp_service/x.py:10", "an event's fields not read as a line's extra="],
        ["atp_service/x.py:11", "an event's fields spread (**) from what is not read here"]]
    assert {(line.event, line.level, line.fields) for line in found.emitted} >= {
        ("literal", "WARNING", frozenset({"k", "left_out"})), ("keywords", "WARNING", frozenset({"k", "left_out"})),
        ("direct", "INFO", frozenset({"k", "left_out"}))}
    emitted = [line for line in found.emitted if line.event in ("literal", "keywords", "direct")]
    levels = {"literal": "WARNING", "keywords": "WARNING", "direct": "INFO"}

    def differing(event: str = "", level: str = "", fields: str = "`k`, `left_out`") -> list[str]:
        """The events ``differences`` names, with ``event``'s row given ``level`` and ``fields``."""
        text = "| `event` | Level | Fields | When |\n|---|---|---|---|\n" + "".join(
            f"| `{name}` | {level if name == event and level else at} | "
            f"{fields if name == event else '`k`, `left_out`'} | x |\n" for name, at in levels.items())
        rows, problems = documented(text)
        assert problems == []
        return [problem.split(":", 1)[0] for problem in differences(rows, emitted)]

    assert differing() == []
    for event in levels:
        assert differing(event, fields="`left_out`") == [event]  # a field of its own
        assert differing(event, fields="`k`") == [event]  # the count of lines left out
        assert differing(event, level="ERROR") == [event]
