"""Stop signals noted from the very start of ``atp-service serve``, before its modules are imported.

Importing the service (gRPC, numpy, redis, every room) takes a second or more on a busy machine;
until ``cli`` takes the signals over, a ``SIGTERM`` killed the process the default way (exit status
-15/143, where a stop during the start exits 0) and a ``SIGHUP`` — an estate reload sent just after
a deploy — killed it outright. This module imports nothing of the service, so the entry points call
``catch_stops`` first; ``cli`` then reads ``noted`` and abandons the start as for any early stop.

A re-execution (``--http2-transport promise``: same pid, a new interpreter) forgets the handlers, and
the new process again takes a while to reach ``catch_stops``: ``cli`` holds the stop signals around
it (``stops_held``), so one sent meanwhile stays pending across the ``execve`` and is noted, not lost
nor fatal, once the new process catches it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOPS = (signal.SIGINT, signal.SIGTERM)
_noted: int | None = None
"""The first stop signal received (SIGINT or SIGTERM), if any: one value, so it stays bounded."""


def catch_stops() -> None:
    """Note SIGINT and SIGTERM from now on, and ignore SIGHUP and SIGUSR1 (the estate is read at
    the start anyway; nothing is running yet whose tasks SIGUSR1 could show)."""
    for sig in STOPS:
        signal.signal(sig, _note)
    ignore_reloads()
    release_stops()


def ignore_reloads() -> None:
    """SIGHUP and SIGUSR1 ignored: whenever the event loop does not handle them (before it takes the signals
    over, and again once it closed: its close gives each back its default action, which terminates)."""
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def release_stops() -> None:
    """Let SIGINT and SIGTERM through, once caught: a process re-executed while they were held
    (``stops_held``) inherits them blocked, one sent meanwhile pending — delivered now, to the handler."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """SIGINT and SIGTERM held for the block: one sent meanwhile stays pending, across an ``execve``
    too (else lost with this process's handlers), and is delivered when the block ends or the new
    process releases them (``release_stops``)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _note(signum: int, _frame: object) -> None:
    global _noted
    if _noted is None:
        _noted = signum


def noted() -> int | None:
    """The stop signal received since ``catch_stops``, or None."""
    return _noted
