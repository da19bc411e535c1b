"""The service's own background tasks, watched: none of them ends unseen.

The channel desk (and its look for keys publishers name), the input-stream reader, housekeeping and the owner
check each loop until the stop cancels them, waiting out Redis's errors on their own. Anything else they raise
is a bug, and it ended the task silently: no channel published again (stock-outs included; or never again the
keys a publisher delivered at versions Redis lost, C4), no input fact was read again, or no hold expired again
(R3), while health said SERVING, and the stop then raised the bug before the final snapshots. Such a task is
now said at once, and the service stops to be restarted (exit status 4), which rebuilds every part from Redis,
as for a shard that stopped working.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class Watched:
    """Tasks watched for an exception; ``on_failure`` is called at the first (the service must stop)."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._on_failure = on_failure
        self.failures: dict[str, BaseException] = {}
        """Why each watched task that ended by itself ended, by task name."""

    def watch(self, name: str, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            task.add_done_callback(functools.partial(self._ended, name))

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:  # stopped, or its work is done (the owner check)
            return
        error = task.exception()
        assert error is not None
        self.failures[name] = error
        log.error("%s stopped working (%r): health NOT_SERVING; the service stops to be restarted", name, error,
                  exc_info=error, extra={"event": "stopping", "why": "task_failed", "task": name})
        self._on_failure()

    async def stopped(self, stop: Awaitable[None]) -> None:
        """``stop`` of a watched part, which raises again how its task ended: a failure said already
        must not end the service's stop before the final snapshots."""
        try:
            await stop
        except Exception as exc:
            if not any(exc is failure for failure in self.failures.values()):
                raise
