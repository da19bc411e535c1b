"""Stop signals noted from the very start of ``atp-service serve``, before its modules are imported.

Importing the service (gRPC, numpy, redis, every room) takes a second or more on a busy machine;
until ``cli`` takes the signals over, a ``SIGTERM`` killed the process the default way (exit status
-15/143, where a stop during the start exits 0) and a ``SIGHUP`` — an estate reload sent just after
a deploy — killed it outright. This module imports nothing of the service, so the entry points call
``catch_stops`` first; ``cli`` then reads ``noted`` and abandons the start as for any early stop.
"""

from __future__ import annotations

import signal

_noted: int | None = None
"""The first stop signal received (SIGINT or SIGTERM), if any: one value, so it stays bounded."""


def catch_stops() -> None:
    """Note SIGINT and SIGTERM from now on, and ignore SIGHUP and SIGUSR1 (the estate is read at
    the start anyway; nothing is running yet whose tasks SIGUSR1 could show)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _note)
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _note(signum: int, _frame: object) -> None:
    global _noted
    if _noted is None:
        _noted = signum


def noted() -> int | None:
    """The stop signal received since ``catch_stops``, or None."""
    return _noted
