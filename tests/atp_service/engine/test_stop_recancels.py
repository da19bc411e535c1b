"""A stop of the engine's background work (order sagas, housekeeping) ends it even when a task
loses one cancellation, as a redis-py call does under Python 3.11 (its send's ``asyncio.wait_for``
returns the send's result when that finishes in the same turn as the cancellation): a saga or a
pass going on after the stop would drive shards and Redis for a process that is going away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from atp_service.engine.coordinator import Coordinator
from atp_service.engine.maintenance import Housekeeper
from atp_service.engine.orders import Orders
from atp_service.engine.router import Engine
from atp_service.metrics import EngineMetrics
from atp_service.tasks import keep


async def _loses_one_cancellation(started: asyncio.Event) -> None:
    started.set()
    with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
        await asyncio.sleep(3600)
    await asyncio.sleep(3600)


async def _ends_after(stop: Callable[[], None], task: asyncio.Task[Any], started: asyncio.Event) -> None:
    await started.wait()
    stop()
    finished, _ = await asyncio.wait([task], timeout=30)  # the test's own bound: without the fix, an hour
    assert finished, "the task went on after the stop"


async def test_a_stop_ends_a_saga_that_loses_the_cancellation() -> None:
    orders = Orders(cast(Engine, SimpleNamespace(metrics=EngineMetrics())))  # only its gauge is read here
    started = asyncio.Event()
    saga = orders._spawn(_loses_one_cancellation(started))
    await _ends_after(orders.stop, saga, started)


async def test_a_stop_ends_housekeeping_work_that_loses_the_cancellation() -> None:
    housekeeper = Housekeeper(cast(Engine, None), cast(Coordinator, None), interval_s=3600)
    started = asyncio.Event()
    expiry = keep(housekeeper._background, _loses_one_cancellation(started))
    await _ends_after(housekeeper.stop, expiry, started)
