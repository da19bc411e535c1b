"""The lock files agree with what the packages ask for, checked by ``make lint`` without a network.

``requirements/service.lock`` (the image) must pin every run-time requirement of the service, the
client and the ``tracing`` extra; ``requirements/dev.lock`` (``make``, CI) those plus the ``dev``,
``redis`` and ``bulk`` extras. Each pin must satisfy the requirement's specifier, and every pin must
carry hashes (pip's ``--require-hashes`` refuses a lock without them, so a hand-edited line would
only fail later, at install). A breach says to run ``make lock``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"atp-service", "atp-client"}  # installed from the work tree, never from an index
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of both packages, with the named extras, for this interpreter."""
    found: list[Requirement] = []
    for path in (ROOT / "pyproject.toml", ROOT / "client/pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        texts = list(project.get("dependencies", []))
        for extra in extras:
            texts += project.get("optional-dependencies", {}).get(extra, [])
        found += [req for req in map(Requirement, texts) if req.marker is None or req.marker.evaluate()]
    return [req for req in found if canonicalize_name(req.name) not in LOCAL]


def pins(lock: Path) -> tuple[dict[str, str], list[str]]:
    """``name -> version`` of every pin in ``lock``, and the names of pins without a hash."""
    lines = lock.read_text().splitlines()
    found: dict[str, str] = {}
    unhashed: list[str] = []
    for index, line in enumerate(lines):
        match = PIN.match(line)
        if match is None:
            continue
        name = canonicalize_name(match.group(1))
        found[name] = match.group(2)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if "--hash=sha256:" not in line + following:
            unhashed.append(name)
    return found, unhashed


def breaches(lock_name: str, extras: tuple[str, ...]) -> list[str]:
    lock = ROOT / "requirements" / lock_name
    if not lock.exists():
        return [f"requirements/{lock_name}: missing"]
    pinned, unhashed = pins(lock)
    found = [f"requirements/{lock_name}: {name} is pinned without a hash" for name in unhashed]
    for req in requirements(extras):
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            found.append(f"requirements/{lock_name}: {req} is not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"requirements/{lock_name}: {req.name}=={version} does not satisfy {req}")
    return found


def main() -> int:
    found = breaches("service.lock", ("tracing",)) + breaches("dev.lock", ("dev", "redis", "bulk", "tracing"))
    for line in found:
        print(line)
    if found:
        print("run `make lock` to recompile the lock files from pyproject.toml")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
