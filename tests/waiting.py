"""Waiting in tests for something to hold, with a bound that fails by name: a bound, not a timing."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from atp_client import Retryable, typed

T = TypeVar("T")


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


async def answered(call: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """``call()``'s answer, the same call made again while it is refused retryable (``Retryable``:
    UNAVAILABLE — in doubt, ``OUTCOME_UNKNOWN`` (R7), or its shard settling a doubt —, RESOURCE_EXHAUSTED,
    DEADLINE_EXCEEDED); any other refusal is raised. For a test's set-up (stock recorded, a hold made)
    on a service whose ``redis_timeout_s`` is short to put the call under test in doubt: on a loaded
    host a set-up write's Redis round trip may pass it too, and the service rightly answers it in doubt.
    Every change carries its ids, so the same call again answers what was decided (R5). Never for the
    call under test: its outcome is what the test asserts. The bound is for a broken run only."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            refusal = typed(exc)
            if not isinstance(refusal, Retryable) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(min(refusal.retry_delay_s or 0.05, 1.0))
