"""Waiting in tests for something to hold, with a bound that fails by name: a bound, not a timing."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], object | Awaitable[object]], what: str, timeout_s: float = 20.0,
                every_s: float = 0.01) -> None:
    """Wait until ``check()`` is true (its result awaited when it is awaitable: a Redis read, a
    health check); fail naming ``what`` past ``timeout_s``. The bound is for a broken run only: a
    busy machine must never reach it, so it is generous."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s}s")
        await asyncio.sleep(every_s)
