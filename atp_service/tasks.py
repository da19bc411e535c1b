"""Small asyncio helpers shared by the service's long-running parts."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Stop a background task and wait until it has unwound (its cancellation is not an error)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def task_stacks(limit: int = 8) -> str:
    """What every asyncio task of the running loop waits on (SIGUSR1, a shutdown that hangs)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=limit, file=out)
    return out.getvalue()
