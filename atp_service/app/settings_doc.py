"""The table of every setting in docs/OPERATIONS.md, generated from the fields so that it cannot
drift from them: each setting's variable and flag, its default and the first sentence of its
docstring (``atp-service serve --help`` has the whole of it).

``python -m atp_service.app.settings_doc docs/OPERATIONS.md`` rewrites it (``make settings-docs``);
a test fails when the committed document differs from what this generates.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from atp_service.config import ServiceConfig
from atp_service.config_settings import Setting, settings_of, shown

MARK = "<!-- settings:begin"
END = "<!-- settings:end -->"
SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z0-9`])")


def first_sentence(doc: str) -> str:
    return SENTENCE_END.split(doc, maxsplit=1)[0]


def _row(setting: Setting) -> str:
    meaning = first_sentence(setting.doc).replace("``", "`").replace("|", "\\|")
    default = shown(setting.default).replace("|", "\\|")
    return f"| `{setting.env}` `{setting.flag}` | `{default}` | {meaning} |"


def settings_table() -> str:
    rows = ["| Variable and flag | Default | Meaning |", "|---|---|---|"]
    return "\n".join(rows + [_row(setting) for setting in settings_of(ServiceConfig)])


def rewrite(text: str) -> str:
    """``text`` with the table filled in between its markers."""
    head, sep, rest = text.partition(MARK)
    marker_rest, newline, _ = rest.partition("\n")
    _, sep_end, tail = rest.partition(END)
    if not sep or not sep_end or not newline:
        raise ValueError("docs/OPERATIONS.md: the settings markers are missing")
    return f"{head}{MARK}{marker_rest}\n{settings_table()}\n{END}{tail}"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/OPERATIONS.md")
    path.write_text(rewrite(path.read_text()))


if __name__ == "__main__":
    main()
