"""``tests/reaper.py``: once the process that started it is gone, what it started under the run's
directory is killed, and nothing else."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from atp_service import EmbeddedRedis

DEADLINE_S = 30.0
"""A guard against hanging, not a timing."""


READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}
"""``read``'s number in ``/proc/<pid>/syscall``, by machine."""


def reading_stdin(proc: subprocess.Popen[bytes]) -> bool:
    """``proc`` blocked in ``read`` on its standard input (fd 0): the reaper at its wait, past its start."""
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None:
        with contextlib.suppress(OSError):  # unreadable: not this kernel's
            call = Path(f"/proc/{proc.pid}/syscall").read_text().split()  # "running" while it runs
            if call[:2] == [READ_SYSCALL.get(platform.machine()), "0x0"]:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return False


def gone(proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_redis_server_of_a_run_that_died_is_killed_and_nothing_outside_it(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    left = EmbeddedRedis(run_dir / "redis").start()  # in a session of its own, as in the tests
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], cwd=elsewhere)
    read, write = os.pipe()
    reaper = subprocess.Popen([sys.executable, "-m", "tests.reaper", str(run_dir)], stdin=read,
                              start_new_session=True, cwd=Path(__file__).parent.parent)
    os.close(read)
    try:
        assert left.process is not None
        # Seen at its wait, not slept on: a reaper still starting after a sleep passed whatever it did next.
        assert reading_stdin(reaper), "the reaper never reached its wait for the run's end"
        assert left.process.poll() is None and reaper.poll() is None, "the reaper waits while its run lives"
        os.close(write)  # the run is gone (its exit closes this end, however it exits)
        assert gone(reaper) and reaper.returncode == 0
        assert gone(left.process), "the run's redis-server outlived it"
        assert bystander.poll() is None, "a process outside the run's directory was killed"
    finally:
        bystander.kill()
        bystander.wait()
        left.stop()
