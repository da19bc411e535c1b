"""A task cancelled just as one of its Redis commands is written: redis-py sends through ``asyncio.wait_for``, which
on Python 3.11 returns the write's result and drops a cancellation arriving in that turn (CPython gh-86296). The
cancel is sent from inside the real write, right after it: an injection point, not a mock of Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


def cancel_as_written(monkeypatch: pytest.MonkeyPatch, client: Any,
                      task: Callable[[], asyncio.Future[Any]]) -> list[bool]:
    """From now on, the first command written through ``client``'s connection class (its one connection made) cancels
    ``task()`` right after the write; the cancel's answer is appended to the list returned."""
    (connection,) = client.connection_pool._available_connections
    real_send, cancels = type(connection)._send_packed_command, []

    async def send_then_cancelled(self: Any, command: Any) -> None:
        await real_send(self, command)  # written: wait_for's inner future ends in this turn
        if not cancels and asyncio.current_task() is not None:
            cancels.append(task().cancel())

    monkeypatch.setattr(type(connection), "_send_packed_command", send_then_cancelled)
    return cancels


async def ended_by_the_cancel(task: asyncio.Future[Any], cancels: list[bool], what: str) -> None:
    """``task`` ended, cancelled by the one cancel ``cancel_as_written`` sent (``cancels``): else ``what`` fails. The
    wait's bound is for a broken run, not a timing."""
    done, _ = await asyncio.wait((task,), timeout=10)
    assert cancels == [True]
    assert done and task.cancelled(), what
