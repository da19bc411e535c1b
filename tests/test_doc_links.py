"""The links between the documents lead somewhere: each relative link names a file of the repository,
and each ``#anchor`` a heading of that document (as GitHub makes its anchors) or an ``<a id>`` in it.

An operator follows these from a runbook in the middle of an incident; a section renamed or moved
leaves them pointing at nothing, and nothing else notices.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.monitoring_helpers import anchors

LINK = re.compile(r"\]\(([^)\s]+)\)")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def documents(root: Path) -> list[Path]:
    return [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md")),
            root / "benchmarks" / "README.md", root / "benchmarks" / "RESULTS.md", root / "client" / "README.md"]


def targets(doc: Path) -> set[str]:
    text = doc.read_text()
    return anchors(text) | set(HTML_ANCHOR.findall(text))


def broken_links(doc: Path, root: Path) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)  # code blocks: no links
    broken = []
    for link in LINK.findall(prose):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc.resolve()
        if not target.exists() or root.resolve() not in target.resolve().parents:
            broken.append(f"{link}: no such file in the repository")
        elif anchor and target.suffix == ".md" and anchor not in targets(target):
            broken.append(f"{link}: no heading of {target.relative_to(root.resolve())} makes #{anchor}")
    return broken


def test_every_link_between_the_documents_leads_to_a_file_and_a_section(project_root: Path) -> None:
    docs = [doc for doc in documents(project_root) if doc.exists()]
    assert len(docs) >= 8
    problems = [f"{doc.relative_to(project_root)}: {problem}"
                for doc in docs for problem in broken_links(doc, project_root)]
    assert not problems, "links that lead nowhere:\n" + "\n".join(problems)


def test_a_renamed_section_breaks_the_links_to_it(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text('# Top\n## What "acknowledged" means\n<a id="kept"></a>\n'
                   "[a](#what-acknowledged-means) [b](#kept) [c](#what-acknowledged-is) [d](missing.md)\n"
                   "```\n[not a link](#nowhere)\n```\n")
    assert broken_links(doc, tmp_path) == ["#what-acknowledged-is: no heading of doc.md makes #what-acknowledged-is",
                                           "missing.md: no such file in the repository"]
