"""``tests/reaper.py``: once the process that started it is gone, what it started under the run's
directory is killed, and nothing else."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from atp_service import EmbeddedRedis

DEADLINE_S = 30.0
"""A guard against hanging, not a timing."""


def read_syscall() -> str | None:
    """``read``'s number as ``/proc/<pid>/syscall`` says it for this machine and this interpreter's ABI (0 on x86_64,
    63 on aarch64 and riscv64, 3 on ppc64le, s390x, i686 and 32-bit ARM): read off this process's own ``read`` of
    that file, which it says while the read runs, its first argument the file's descriptor. None: not said here."""
    try:
        fd = os.open("/proc/self/syscall", os.O_RDONLY)
    except OSError:
        return None
    try:
        call = os.read(fd, 256).decode().split()
    except OSError:
        return None
    finally:
        os.close(fd)
    return call[0] if call[1:2] == [hex(fd)] else None


def reading_stdin(proc: subprocess.Popen[bytes]) -> bool | None:
    """``proc`` blocked in ``read`` on its standard input (fd 0): the reaper at its wait, past its start. False: not
    within ``DEADLINE_S``; None, at once: this host does not say where a process waits (no ``/proc/<pid>/syscall``,
    or another process's refused, as where ptrace may not attach: Yama's ``ptrace_scope`` 2 or 3)."""
    deadline, read = time.monotonic() + DEADLINE_S, read_syscall()
    if read is None:
        return None
    while proc.poll() is None:
        try:
            call = Path(f"/proc/{proc.pid}/syscall").read_text().split()  # "running" while it runs
        except PermissionError:
            return None
        except OSError:  # gone meanwhile
            call = []
        if call[:2] == [read, "0x0"]:
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
        # Seen at its wait, not slept on: a reaper still starting after a sleep passed whatever it did next. A host
        # that does not say where a process waits (``reading_stdin``: None) is given the time it takes, as before.
        if (seen := reading_stdin(reaper)) is None:
            time.sleep(0.2)
        assert seen is not False, "the reaper never reached its wait for the run's end"
        assert left.process.poll() is None and reaper.poll() is None, "the reaper waits while its run lives"
        os.close(write)  # the run is gone (its exit closes this end, however it exits)
        assert gone(reaper) and reaper.returncode == 0
        assert gone(left.process), "the run's redis-server outlived it"
        assert bystander.poll() is None, "a process outside the run's directory was killed"
    finally:
        bystander.kill()
        bystander.wait()
        left.stop()


def _reading_its_stdin() -> subprocess.Popen[bytes]:
    """A process that reads its standard input (a pipe) until it closes, as the reaper does."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read()"], stdin=subprocess.PIPE)


def test_a_process_reading_its_stdin_is_seen_so_on_a_machine_named_in_no_table(monkeypatch: Any) -> None:
    """``read``'s number in ``/proc/<pid>/syscall`` is the machine's (0 on x86_64, 63 on aarch64 and riscv64, 3 on
    ppc64le, s390x and 32-bit ARM): looked up by ``platform.machine()`` in a table of two, every other machine's
    test waited its 30 s bound and failed ("the reaper never reached its wait"). Read of this process's own
    ``read`` of that file, it is this machine's, whatever the machine."""
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(sys.modules[__name__], "DEADLINE_S", 5.0)
    proc = _reading_its_stdin()
    try:
        assert reading_stdin(proc) is True  # was: False, after the bound
    finally:
        proc.kill()
        proc.wait()


def test_a_host_that_hides_where_a_process_waits_says_so_at_once(monkeypatch: Any) -> None:
    """``/proc/<pid>/syscall`` is another process's to read only where ptrace could attach to it (Yama's
    ``ptrace_scope`` 2 or 3, a sandboxed kernel): refused, the wait was taken for one not reached yet, 30 s then a
    failure. Refused, it is said at once (None): the test cannot see the reaper's wait on this host."""
    proc = _reading_its_stdin()
    hidden = f"/proc/{proc.pid}/syscall"

    class Hiding(type(Path())):  # type: ignore[misc]
        def read_text(self, *args: Any, **kwargs: Any) -> str:
            if str(self) == hidden:
                raise PermissionError(13, "Permission denied", hidden)
            return str(super().read_text(*args, **kwargs))

    monkeypatch.setattr(sys.modules[__name__], "Path", Hiding)
    monkeypatch.setattr(sys.modules[__name__], "DEADLINE_S", 5.0)
    try:
        began = time.monotonic()
        assert reading_stdin(proc) is None  # was: False, after the bound
        assert time.monotonic() - began < 1.0
    finally:
        proc.kill()
        proc.wait()
