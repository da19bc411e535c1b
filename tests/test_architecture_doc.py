"""docs/ARCHITECTURE.md's map of the rooms names every module there is, and no module that is not.

A newcomer reads the map to find where a thing lives; a module split off, renamed or added without a
line there is a room the map does not show, and a module named that no longer exists sends them looking
for nothing. In the map's code block a line starting at column 0 opens a package (``atp_service/``), one
starting ``  room/`` a room of ``atp_service`` (``  app/``); a bare ``name.py`` is of the room it is
written in, a ``room/name.py`` of its package (or of the repository: ``reservation/_orders.py``).
The data paths name what does the work as `` `room/module.py Name` ``: ``Name`` is defined in that module.
"""

from __future__ import annotations

import re
from pathlib import Path

import atp_service

PACKAGES = {"reservation/": "reservation", "atp_service/": "atp_service",
            "client/atp_client/": "client/atp_client", "publishers/": "publishers"}
PACKAGE_LINE = re.compile(r"^(\S+/)")
ROOM_LINE = re.compile(r"^  ([a-z_]+/)\s")
MODULE_AT_ROOT = re.compile(r"^  [\w.]+\.py")
MODULE = re.compile(r"(?<![\w.])([a-z_][\w/]*\.py)\b")
MODULE_AND_NAME = re.compile(r"`([\w/]+\.py) ([A-Za-z_]\w*)(?:\.\w+)*`")


def rooms_block(architecture: str) -> str:
    return architecture.split("## The rooms", 1)[1].split("```", 2)[1]


def named_modules(block: str, root: Path) -> tuple[set[Path], list[str]]:
    """The modules the map names (resolved) and the names it gives that lead to no file."""
    named: set[Path] = set()
    absent: list[str] = []
    package, room = "", ""
    for line in block.splitlines():
        if opened := PACKAGE_LINE.match(line):
            package, room = PACKAGES[opened.group(1)], ""
        if (in_room := ROOM_LINE.match(line)) and package == "atp_service":
            room = in_room.group(1)
        elif MODULE_AT_ROOT.match(line):
            room = ""
        for name in MODULE.findall(line):
            candidates = [root / package / name, root / name] if "/" in name else [root / package / room / name]
            found = next((path for path in candidates if path.exists()), None)
            if found is None:
                absent.append(f"{package}/{room}{name}")
            else:
                named.add(found.resolve())
    return named, absent


def modules(root: Path) -> set[Path]:
    return {path.resolve() for package in PACKAGES.values() for path in (root / package).rglob("*.py")
            if path.name != "__init__.py" and "pb" not in path.relative_to(root / package).parts}


def test_the_architecture_map_names_every_module_and_none_that_is_missing(project_root: Path) -> None:
    named, absent = named_modules(rooms_block((project_root / "docs" / "ARCHITECTURE.md").read_text()),
                                  project_root)
    unnamed = sorted(str(path.relative_to(project_root.resolve())) for path in modules(project_root) - named)
    assert not absent, "docs/ARCHITECTURE.md names modules that do not exist: " + ", ".join(absent)
    assert not unnamed, "modules docs/ARCHITECTURE.md's map does not name: " + ", ".join(unnamed)


def undefined_names(architecture: str, root: Path) -> list[str]:
    """Each `` `room/module.py Name` `` whose module is not found, or defines no ``Name`` (a function, a class, a
    module-level assignment: a name merely imported there is another module's)."""
    wrong = []
    for path, name in MODULE_AND_NAME.findall(architecture):
        module = next((root / package / path for package in PACKAGES.values() if (root / package / path).exists()),
                      None)
        defined = re.compile(rf"^\s*(?:async def|def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]", re.M)
        if module is None or not defined.search(module.read_text()):
            wrong.append(f"{path} {name}")
    return wrong


def test_each_module_and_name_of_the_data_paths_is_defined_there(project_root: Path) -> None:
    wrong = undefined_names((project_root / "docs" / "ARCHITECTURE.md").read_text(), project_root)
    assert not wrong, "docs/ARCHITECTURE.md names what these modules do not define: " + ", ".join(wrong)


def test_the_public_names_of_atp_service_it_names_are_there(project_root: Path) -> None:
    """"Importing `atp_service` itself loads nothing: its public names (...) are imported on first use": each
    name listed there is one ``atp_service`` answers (lazily), not one of another distribution."""
    architecture = (project_root / "docs" / "ARCHITECTURE.md").read_text()
    listed = re.search(r"public names \(([^)]*)\)", architecture)
    assert listed is not None
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert names
    missing = [name for name in names if not hasattr(atp_service, name)]
    assert not missing, "docs/ARCHITECTURE.md names as atp_service's public names what it lacks: " + ", ".join(missing)


def test_a_module_is_found_in_the_room_it_is_written_in(tmp_path: Path) -> None:
    for module in ("atp_service/edge/explain.py", "atp_service/engine/explain.py", "atp_service/config.py",
                   "reservation/_orders.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    block = ("\nreservation/   the domain\n  _orders.py   orders\natp_service/\n"
             "  edge/   explain.py (ExplainAvailability),\n              gone.py\n"
             "  engine/   explain.py, over reservation/_orders.py\n  config.py   settings\n")
    named, absent = named_modules(block, tmp_path)
    assert named == {(tmp_path / module).resolve() for module in
                     ("atp_service/edge/explain.py", "atp_service/engine/explain.py", "atp_service/config.py",
                      "reservation/_orders.py")}
    assert absent == ["atp_service/edge/gone.py"]


def test_a_name_only_imported_is_not_defined_there(tmp_path: Path) -> None:
    (tmp_path / "atp_service" / "edge").mkdir(parents=True)
    (tmp_path / "atp_service" / "edge" / "servicer.py").write_text(
        "from atp_service.edge.observed import observed as _observed\n\n\nclass Servicer:\n"
        "    async def Reserve(self) -> None: ...\n")
    doc = "`edge/servicer.py _observed` `edge/servicer.py Servicer.Reserve` `edge/servicer.py Reserve` `shard.py _run`"
    assert undefined_names(doc, tmp_path) == ["edge/servicer.py _observed", "shard.py _run"]
