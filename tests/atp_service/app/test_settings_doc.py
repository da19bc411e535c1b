"""The documents name settings that exist, and their table of every setting is current."""

from __future__ import annotations

import re
from pathlib import Path

from atp_service.app.settings_doc import END, MARK, rewrite
from atp_service.config import ServiceConfig
from atp_service.config_settings import OTHER_TOOLS, settings_of

VARIABLE = re.compile(r"\bATP_[A-Z0-9_]*[A-Z0-9]\b")
OPERATORS_READ = ("README.md", "docs/*.md", "benchmarks/README.md", "Dockerfile", "docker-compose.yml")
NOT_SETTINGS_ON_PURPOSE = {"ATP_X", "ATP_SHARD"}  # a placeholder; the typo shown being refused


def test_the_table_of_every_setting_is_current_and_lists_every_one(project_root: Path) -> None:
    text = (project_root / "docs" / "OPERATIONS.md").read_text()
    assert rewrite(text) == text, "docs/OPERATIONS.md is stale: run `make settings-docs`"
    table = text.split(MARK, 1)[1].split(END, 1)[0]
    for setting in settings_of(ServiceConfig):
        assert f"| `{setting.env}` `{setting.flag}` |" in table


def test_every_variable_the_documents_name_is_a_setting_or_another_tools(project_root: Path) -> None:
    known = {s.env for s in settings_of(ServiceConfig)} | set(OTHER_TOOLS) | NOT_SETTINGS_ON_PURPOSE
    for pattern in OPERATORS_READ:
        for path in project_root.glob(pattern):
            unknown = set(VARIABLE.findall(path.read_text())) - known
            assert not unknown, f"{path.relative_to(project_root)} names {sorted(unknown)}: no such setting"
