"""Waiting in tests for something to hold, with a bound that fails by name: a bound, not a timing."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from atp_client import Retryable, typed
from atp_service import AtpService
from atp_service.edge.drain import Drain

T = TypeVar("T")

FAST_RECONNECT_S = 0.2
"""``reconnect_max_s`` for a test's client made before its service process listens (started, or started again after
a kill): the client's own default (1 s, jittered up to 1.2 s) already bounds the wait once the process is ready, and
this only makes it shorter — about 0.5 s saved on average at each of those starts (test_faults.py alone has 21).
Nothing here depends on it: a test passes on the default too, only slower."""


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


class _Counted(Drain):
    """A service's ``Drain`` that also counts the calls it let in (``taken``): every handler raises ``active`` by one
    as it begins (``observed``, ``Drain.enter``)."""

    taken = 0

    @property  # type: ignore[override]  # an attribute of Drain's, read and written through here
    def active(self) -> int:
        return int(self.__dict__["active"])

    @active.setter
    def active(self, value: int) -> None:
        if value > self.__dict__.get("active", 0):
            self.taken += 1
        self.__dict__["active"] = value


async def taken_past_its_deadline(call: Callable[[float], Awaitable[object]], service: AtpService,
                                  deadline_s: float = 0.2, timeout_s: float = 30.0) -> grpc.aio.AioRpcError:
    """The refusal of ``call(d)`` — the call under test, given the deadline ``d`` — made until ``service`` took it up
    (a handler of its servicer began) before its deadline passed. gRPC drops a call whose deadline passes before the
    service's event loop takes it up — on a busy host, a stall of ``d`` at that moment —: no handler runs and nothing
    is done, so what the test waits for next (an append held, a call observed) never comes. Such a call changed
    nothing, and is made again (the same ids: the same first call), its deadline twice as long. Whether it was taken
    is read once the service has no call in hand. The bound is for a broken run only."""
    drain = service._servicer.drain
    if not isinstance(drain, _Counted):
        drain.__class__ = _Counted
    assert isinstance(drain, _Counted)
    deadline = time.monotonic() + timeout_s
    while True:
        taken = drain.taken
        try:
            answer = await call(deadline_s)
        except grpc.aio.AioRpcError as exc:
            refused = exc
        else:
            raise AssertionError(f"answered within its deadline of {deadline_s}s: {answer}")
        await until(lambda: drain.active == 0, "the service's handlers ended", timeout_s)
        if drain.taken > taken:
            return refused
        if time.monotonic() > deadline:
            raise AssertionError(f"the call was never taken up by the service before its deadline ({deadline_s}s)")
        deadline_s *= 2
