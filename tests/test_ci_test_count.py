"""`make test` judges the whole suite's JUnit report (.ci/test_count.py): a run that lost most of its
tests, or skipped any, is not green though pytest exited 0."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def loaded() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_count", ROOT / ".ci" / "test_count.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(tmp_path: Path, ran: int, skipped: int = 0) -> str:
    cases = "".join(f'<testcase classname="tests.m" name="t{i}">{"<skipped/>" if i < skipped else ""}</testcase>'
                    for i in range(ran))
    path = tmp_path / "report.xml"
    path.write_text(f'<testsuites><testsuite name="pytest" tests="{ran}" skipped="{skipped}">{cases}'
                    f'</testsuite></testsuites>')
    return str(path)


def test_a_whole_run_of_every_test_none_skipped_is_green(tmp_path: Path) -> None:
    module = loaded()
    assert module.judged(report(tmp_path, module.MIN_TESTS)) == []


def test_a_run_that_lost_tests_is_not_green(tmp_path: Path) -> None:
    module = loaded()
    (problem,) = module.judged(report(tmp_path, module.MIN_TESTS - 1))
    assert f"{module.MIN_TESTS - 1} tests ran" in problem


def test_a_run_that_skipped_a_test_is_not_green_and_names_it(tmp_path: Path) -> None:
    module = loaded()
    (problem,) = module.judged(report(tmp_path, module.MIN_TESTS + 1, skipped=1))
    assert "1 tests skipped" in problem and "tests.m::t0" in problem
    assert module.main(["test_count.py", report(tmp_path, 3)]) == 1


def planned_test(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS")}
    done = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(ROOT), "test"], capture_output=True,
                          text=True, timeout=60, env={**base, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_whole_suite_is_judged_and_a_chosen_part_is_not() -> None:
    assert ".ci/test_count.py build/test-report.xml" in planned_test()
    assert "test_count.py" not in planned_test(PYTEST_ARGS="tests/test_makefile.py")
