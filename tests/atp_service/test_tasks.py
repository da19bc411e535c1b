"""Stopping a background task ends it, also where Python dropped the cancellation (atp_service/tasks.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from atp_service.tasks import cancel_and_wait, keep, task_stacks

BOUND_S = 60  # only a failure waits this long: a stop that never ends


async def test_a_cancellation_dropped_by_wait_for_still_ends_the_task() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the inner result and drops a cancellation that
    arrives in the turn its inner future finished (gh-86296); redis-py sends every command through
    it, so a service loop stopped just as it wrote a command ran on, and the service's stop hung
    (test_security's rediss test, 2 in 29 runs on a loaded machine)."""
    loop = asyncio.get_running_loop()
    sent = loop.create_future()  # redis-py's write of a command, inside wait_for

    async def service_loop() -> None:
        await asyncio.wait_for(sent, 5)
        await asyncio.Event().wait()  # the next read: ends only when cancelled

    task = loop.create_task(service_loop())
    await asyncio.sleep(0)  # the loop now waits inside wait_for
    sent.set_result(None)  # the write finished; wait_for has not been woken yet
    stopping = loop.create_task(cancel_and_wait(task))  # the stop lands before it is
    try:
        await asyncio.wait((stopping,), timeout=BOUND_S)  # (not wait_for: its cancel would unstick it)
        assert stopping.done(), "cancel_and_wait never returned: the task ran on, its cancellation dropped"
        assert task.cancelled()
    finally:
        task.cancel()
        stopping.cancel()


async def test_an_ordinary_task_ends_at_once_and_its_own_failure_is_not_hidden() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), BOUND_S)
    assert task.cancelled()

    async def fails() -> None:
        raise RuntimeError("broke on its own")

    failed = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broke on its own"):
        await cancel_and_wait(failed)
    await cancel_and_wait(None)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    """A stop that is itself cancelled (``atp-service serve`` bounds its shutdown) stops waiting."""
    shielded = asyncio.Event()

    async def slow_to_unwind() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(shielded.wait())

    task = asyncio.get_running_loop().create_task(slow_to_unwind())
    await asyncio.sleep(0)
    stopping = asyncio.get_running_loop().create_task(cancel_and_wait(task))
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    shielded.set()
    await asyncio.wait_for(cancel_and_wait(task), BOUND_S)


async def test_keep_holds_the_task_until_it_ends_and_hands_its_result_on() -> None:
    held: set[asyncio.Task[Any]] = set()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    task = keep(held, work())
    assert held == {task}
    release.set()
    assert await task == 7
    await asyncio.sleep(0)  # the done callback runs in the next turn
    assert not held


class _FrameWithoutLine:
    """A frame as a gRPC (Cython) coroutine shows it: a code object, no line number."""

    f_lineno = None
    f_back = None
    f_globals: dict[str, Any] = {}

    class f_code:
        co_filename = "grpc/_cython/cygrpc.pyx"
        co_name = "_handle_call"


class _CythonLikeCoroutine(Coroutine[Any, Any, None]):
    """A coroutine whose ``cr_frame`` has no line number, waiting until closed."""

    cr_frame = _FrameWithoutLine()

    def send(self, value: Any) -> Any:
        return None  # a bare yield: the task is stepped again next turn

    def throw(self, *args: Any) -> Any:
        raise StopIteration

    def close(self) -> None:
        pass

    def __await__(self) -> Generator[Any, None, None]:
        yield


async def test_the_task_dump_names_a_task_whose_frame_has_no_line_number() -> None:
    """``task_stacks`` (SIGUSR1, a stop that hangs) raised ``TypeError`` from ``linecache`` on a gRPC
    coroutine's frame, losing the dump of every task."""
    odd = asyncio.ensure_future(_CythonLikeCoroutine())
    try:
        await asyncio.sleep(0)
        dump = task_stacks()
    finally:
        odd.cancel()
    assert "_handle_call (grpc/_cython/cygrpc.pyx)" in dump, dump
    assert "test_the_task_dump_names_a_task_whose_frame_has_no_line_number" in dump  # the other tasks still there
