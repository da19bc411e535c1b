"""Every process a test process starts dies with it, however that one ends.

A hung test is ended by pytest-timeout (``timeout_method = "thread"``) with ``os._exit``: no fixture's
teardown runs, and the redis-servers (started in a session of their own, ``start_new_session``) and
the service processes the tests started were left running — orphans holding ports, memory and CPU
on a CI host for the rest of its life. On Linux each child started from the main thread now asks the
kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), set between the fork and the exec.

The signal follows the *thread* that forked, not the process: a child started from another thread
(``asyncio.to_thread``, a restart of the embedded redis-server in a worker thread) would be sent it
when that thread ends, however long the test still needed the child. Only the main thread's
children get it: the main thread ends with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal a process gets when the thread that forked it ends (linux/prctl.h)."""


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _prctl()  # looked up now: nothing is imported or loaded between a fork and its exec


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM to the child when its parent (the forking thread) ends. ``parent``: the
    parent's pid, checked once it is set — a parent that died before the fork's child got this far
    sends no signal any more."""
    assert _PRCTL is not None
    prctl = _PRCTL

    def in_the_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_the_child


class DyingWithParent(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` whose child dies with the test process (see the module's docstring), unless the
    caller gives a ``preexec_fn`` of its own or is not the main thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if (_PRCTL is not None and kwargs.get("preexec_fn") is None
                and threading.current_thread() is threading.main_thread()):
            kwargs["preexec_fn"] = die_with_parent(os.getpid())
        super().__init__(*args, **kwargs)


def install() -> None:
    """Every ``subprocess.Popen`` of this process from now on — ``subprocess.run``, asyncio's subprocesses
    and ``EmbeddedRedis`` look it up there at each call — is a ``DyingWithParent``."""
    subprocess.Popen = DyingWithParent  # type: ignore[misc]
