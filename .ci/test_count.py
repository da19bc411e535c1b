"""The whole suite's run judged from its JUnit report: green only when it ran at least ``MIN_TESTS``
tests and skipped none. pytest already fails a run that collects nothing; this also fails one that
silently lost most of its tests (a conftest or a fixture skipping whole modules, a ``testpaths`` or
import gone wrong) or hid failures behind skips: the suite has no test that may be skipped."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

MIN_TESTS = 2000
"""Below the suite's size (2,053 tests on 2026-12-02): raise it as the suite grows, lower it only with a reason."""


def judged(report: str) -> list[str]:
    """What is wrong with the run ``report`` (a JUnit XML file) records; empty when nothing is."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    ran = sum(int(s.get("tests", 0)) for s in suites)
    skipped = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
               if case.find("skipped") is not None]
    problems = []
    if ran < MIN_TESTS:
        problems.append(f"{ran} tests ran, fewer than the {MIN_TESTS} the suite has (MIN_TESTS in {__file__})")
    if skipped:
        problems.append(f"{len(skipped)} tests skipped (none may be): " + ", ".join(skipped[:10]))
    return problems


def main(argv: list[str]) -> int:
    problems = judged(argv[1])
    for problem in problems:
        print(f"test run not green: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
