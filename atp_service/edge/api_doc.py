"""The generated parts of docs/API.md, so that they cannot drift from the code: the table of
refusal reasons (each ``reservation.Reason``, its docstring, status and retry delay from
``errors.STATUS``) and the published retry policy (``atp_client/service_config.json``, verbatim).

``python -m atp_service.edge.api_doc`` rewrites them (``make api-docs``); a test fails when the
committed document differs from what this generates.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import sys
from importlib import resources
from pathlib import Path

from atp_service.edge.errors import STATUS
from reservation import Reason
from reservation import _errors as reasons_module

MARK = "<!-- {name}:begin"
END = "<!-- {name}:end -->"


def reason_docs() -> dict[str, str]:
    """Each reason's docstring (the string after its member in the class body)."""
    tree = ast.parse(inspect.getsource(reasons_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Reason").body
    docs = {}
    for member, after in itertools.pairwise(body):
        if (isinstance(member, ast.Assign) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            name = member.targets[0]
            assert isinstance(name, ast.Name)
            docs[name.id] = " ".join(after.value.value.split())
    return docs


def reasons_table() -> str:
    docs = reason_docs()
    rows = ["| # | `ErrorInfo.reason` | Status | Retry after | Meaning |", "|---|---|---|---|---|"]
    for reason in sorted(Reason):
        status, retry_ms = STATUS[reason]
        retry = f"{retry_ms} ms" if retry_ms is not None else "—"
        meaning = docs[reason.name].replace("``", "`").replace("|", "\\|")
        rows.append(f"| {int(reason)} | `{reason.name}` | `{status.name}` | {retry} | {meaning} |")
    return "\n".join(rows)


def service_config() -> str:
    text = resources.files("atp_client").joinpath("service_config.json").read_text()
    return f"```json\n{text.rstrip()}\n```"


BLOCKS = {"reasons": reasons_table, "service-config": service_config}


def rewrite(text: str) -> str:
    """``text`` with every generated block filled in between its markers."""
    for name, make in BLOCKS.items():
        head, sep, rest = text.partition(MARK.format(name=name))
        marker_rest, nl, _ = rest.partition("\n")
        _, sep2, tail = rest.partition(END.format(name=name))
        if not sep or not sep2 or not nl:
            raise ValueError(f"docs/API.md: the {name} markers are missing")
        text = f"{head}{MARK.format(name=name)}{marker_rest}\n{make()}\n{END.format(name=name)}{tail}"
    return text


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/API.md")
    path.write_text(rewrite(path.read_text()))


if __name__ == "__main__":
    main()
