"""What `make run` sets up on a fresh machine (README, "Two commands"): the venv and redis-server,
not the tools only the tests of deploy/ use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def planned(target: str) -> str:
    """The commands `make TARGET` would run (`make -n` prints even the silent ones, runs none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    done = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(ROOT), target],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "cluster", "bench", "soak"])
def test_running_the_service_installs_no_tool_of_the_deploy_tests(target: str) -> None:
    """`make run` installed Debian's prometheus (promtool) and docker-compose where they were missing:
    minutes more on a first start, and, on a host with systemd, a Prometheus server left running."""
    plan = planned(target)
    assert "redis-server" in plan  # what the service needs is still set up
    assert "promtool" not in plan and "docker" not in plan, plan


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_test_suite_still_installs_the_tools_of_the_deploy_tests() -> None:
    plan = planned("test")
    assert "promtool" in plan and "docker-compose" in plan, plan
