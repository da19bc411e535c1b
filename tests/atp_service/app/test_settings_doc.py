"""The documents and tools name settings that exist, and the table of every setting is current."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from atp_service.app.settings_doc import END, MARK, first_sentence, rewrite
from atp_service.config import ServiceConfig
from atp_service.config_settings import OTHER_TOOLS, settings_of
from atp_service.config_values import parse_value

VARIABLE = re.compile(r"\bATP_[A-Z0-9_]*[A-Z0-9]\b")
READ = (".py", ".md", ".toml", ".yml", ".yaml", ".sh", "Makefile", "Dockerfile")
SKIPPED_DIRS = {".git", ".venv", "var", "node_modules", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache",
                ".pytest_cache", ".hypothesis"}
WRONG_ON_PURPOSE = {  # files that name variables that are no settings, to show them refused
    "CHANGELOG.md", "tests/atp_service/test_config.py", "tests/atp_service/app/test_settings.py",
    "tests/atp_service/app/test_settings_doc.py"}
PLACEHOLDERS = {"ATP_X", "ATP_SHARD"}  # the docs' "env ATP_X" and the typo they show being refused
MOST_USED_HEADER = "| Variable | Default | Meaning |"
CODE = re.compile(r"`([^`]*)`")


def project_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if name.endswith(READ) and path.relative_to(root).as_posix() not in WRONG_ON_PURPOSE:
                yield path


def test_the_table_of_every_setting_is_current_and_lists_every_one(project_root: Path) -> None:
    text = (project_root / "docs" / "OPERATIONS.md").read_text()
    assert rewrite(text) == text, "docs/OPERATIONS.md is stale: run `make settings-docs`"
    table = text.split(MARK, 1)[1].split(END, 1)[0]
    for setting in settings_of(ServiceConfig):
        assert f"| `{setting.env}` `{setting.flag}` |" in table


def test_every_variable_the_project_names_is_a_setting_or_another_tools(project_root: Path) -> None:
    """A tool that reads a new ``ATP_*`` variable must add it to ``OTHER_TOOLS``, or the service
    started in the same environment would refuse it; a document must not name one that is none."""
    known = {s.env for s in settings_of(ServiceConfig)} | set(OTHER_TOOLS) | PLACEHOLDERS
    strays = {}
    for path in project_files(project_root):
        if unknown := set(VARIABLE.findall(path.read_text(errors="replace"))) - known:
            strays[path.relative_to(project_root).as_posix()] = sorted(unknown)
    assert strays == {}


def test_each_settings_first_sentence_is_whole() -> None:
    """The table shows the first sentence only: one cut inside parentheses (an "e.g." followed by
    a name) leaves a row that stops mid-phrase."""
    cut = [s.env for s in settings_of(ServiceConfig)
           if first_sentence(s.doc).count("(") != first_sentence(s.doc).count(")")]
    assert cut == []


def test_the_operations_guide_names_every_other_tools_variable(project_root: Path) -> None:
    """The guide lists the variables the service does not refuse though they are no settings
    (``OTHER_TOOLS``): an operator reading why the start took ``ATP_STORE_SKUS`` looks there."""
    text = (project_root / "docs" / "OPERATIONS.md").read_text()
    listed = text.split("**Mistakes stop the start.**", 1)[1].split("`OTHER_TOOLS`", 1)[0]
    assert [name for name in OTHER_TOOLS if f"`{name}`" not in listed] == []


def test_the_most_used_settings_show_their_defaults(project_root: Path) -> None:
    """The hand-written table of the most used settings (``| Variable | Default | Meaning |``) gives
    each variable's default as a value (`` `512` ``, one per variable where a row has several); a
    setting unset by default is described in words (``unset → embedded redis-server``)."""
    lines = (project_root / "docs" / "OPERATIONS.md").read_text().splitlines()
    start = lines.index(MOST_USED_HEADER) + 2
    settings = {s.env: s for s in settings_of(ServiceConfig)}
    wrong, rows = [], 0
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names_cell, default_cell = line.split(" | ")[:2]
        names, values = CODE.findall(names_cell), CODE.findall(default_cell)
        rows += 1
        for at, name in enumerate(names):
            setting = settings[name]
            if setting.default in (None, ""):
                continue
            said = values[at] if len(values) == len(names) else None
            if said is None or parse_value(setting.name, setting.type_name, said) != setting.default:
                wrong.append(f"{name}: documented {default_cell.strip()!r}, default {setting.default!r}")
    assert rows > 30 and wrong == []
