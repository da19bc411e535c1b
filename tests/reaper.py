"""What a test run started outlives it only as long as the run: ``python -m tests.reaper DIR`` waits
for its standard input to close — the test process that started it gone, however it went (its tests
done, pytest-timeout's ``os._exit``, ``kill -9``) — then kills every process of this user whose working
directory or command line lies under ``DIR`` (the run's temporary directory).

An embedded ``redis-server`` starts in a session of its own (a Ctrl-C aimed at the service must not
kill it before the final snapshot), so a test worker killed mid-run left its servers running for
good, hours later still holding ports and memory on a developer's machine or a CI host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def left_under(root: Path) -> Iterator[int]:
    """The processes of this user (not this one) working in ``root`` or naming it on their command line."""
    base, uid, me = str(root), os.getuid(), os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cwd = os.readlink(entry / "cwd")
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if _under(cwd, base) or any(_under(arg, base) for arg in args):
            yield int(entry.name)


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    sys.stdin.buffer.read()  # until the test process is gone: its end of the pipe closes with it
    for pid in left_under(root):
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
