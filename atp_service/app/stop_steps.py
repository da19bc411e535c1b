"""The service's stop: every step run, whatever an earlier one raised.

A stop is a sequence (calls drained, gRPC stopped, the reader, the desks, the hand-overs, every shard's
final snapshot, Redis's connections closed). Run straight, an exception from one step (a bug in a part's
stop) skipped every step after it: no shard was stopped nor snapshotted, leases were not handed over and
Redis's connections were left open. Each step now runs; each failure is said at once, with its traceback,
and the stop raises them all once its last step has run (``atp-service serve``: exit status 1). A
cancellation of the stop (its bound) is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[Any]]]
"""A step of the stop: its name (said if it fails), and what it runs."""


class StopFailed(ExceptionGroup[Exception]):
    """Steps of the stop that raised (each said when it did); every other step ran."""


async def every_step(steps: Sequence[Step]) -> None:
    """Each step awaited in turn, those after one that raised too; raises ``StopFailed`` with every failure
    once the last has run."""
    failures: list[Exception] = []
    for name, step in steps:
        try:
            await step()
        except Exception as exc:
            failures.append(exc)
            log.error("stopping: step %s failed (%r); the stop goes on", name, exc, exc_info=exc,
                      extra={"event": "stop_step_failed", "step": name})
    if failures:
        raise StopFailed(f"{len(failures)} step(s) of the stop failed", failures)
