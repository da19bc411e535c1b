"""The call book a graceful stop settles (``calls.py``), with real tasks and no gRPC: a call is in the book
while any of its tasks runs, a stop is told of every move once it settles (ends, writes begun), and a call
waiting on nothing but its write past ``stall_s`` is cut while one being worked on never is (R8)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from atp_service.edge.calls import Call, CallBook, current
from reservation import Unavailable

STALL_S = 0.2
GRACE_S = 30.0  # never waited out here: each settle returns at a move or a stall, far inside it


async def _call(book: CallBook, method: str, body: Callable[[Call], Awaitable[Any]]) -> None:
    """A handler as ``handlers.py`` runs one: booked, then its body, then its answer's write begun."""
    call = book.enter(method)
    assert current() is call
    try:
        await body(call)
    finally:
        call.write_begun()


async def _settled_within(book: CallBook, bound_s: float) -> Any:
    started = time.monotonic()
    settled = await book.settle(GRACE_S)
    assert time.monotonic() - started < bound_s
    return settled


def _tallied_once_ended(book: CallBook, task: asyncio.Task[Any]) -> asyncio.Event:
    """Set by the first of ``book``'s tallies (``settle``'s count of the calls left) made once ``task`` has ended."""
    tallied, tally = asyncio.Event(), book._tally

    def counted(now: float) -> Any:
        if task.done():
            tallied.set()
        return tally(now)

    book._tally = counted  # type: ignore[method-assign]
    return tallied


async def test_a_stop_settles_as_soon_as_the_calls_booked_before_it_end() -> None:
    book, go = CallBook(STALL_S), asyncio.Event()
    calls = [asyncio.create_task(_call(book, "Reserve", lambda _: go.wait())) for _ in range(3)]
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.05, go.set)
    settled = await _settled_within(book, 5.0)
    assert not settled.working and not settled.stalled
    await asyncio.gather(*calls)
    assert not book._tasks  # every task out of the book at its end
    with pytest.raises(Unavailable):
        book.enter("Reserve")  # closed: refused before it does anything


async def test_a_call_waiting_on_its_write_past_the_stall_is_cut_and_one_worked_on_is_not() -> None:
    book, working, cut = CallBook(STALL_S), asyncio.Event(), asyncio.Event()

    async def stalls(call: Call) -> None:
        call.write_begun()  # gRPC's write of its answer, which its caller never reads
        await cut.wait()

    stalled = asyncio.create_task(_call(book, "Reserve", stalls))
    worked = asyncio.create_task(_call(book, "Confirm", lambda _: working.wait()))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(STALL_S * 3, working.set)
    settled = await _settled_within(book, 5.0)  # the worked-on one's end, then the stalled one is cut
    assert settled.stalled == {"Reserve": 1} and not settled.working
    cut.set()
    await asyncio.gather(stalled, worked)


async def test_a_call_stays_booked_while_the_work_it_holds_runs() -> None:
    book, decided = CallBook(STALL_S), asyncio.Event()

    async def holds(call: Call) -> None:
        call.hold(asyncio.create_task(decided.wait()))  # a stream's batch, decided past its handler's end

    handler = asyncio.create_task(_call(book, "ReserveStream", holds))
    await handler
    await asyncio.sleep(0)
    assert set(book._tasks.values()) != set()  # its handler ended, its batch not: still booked
    asyncio.get_running_loop().call_later(STALL_S * 3, decided.set)
    settled = await _settled_within(book, 5.0)  # worked on, never stalled: waited for, to its end
    assert not settled.working and not settled.stalled


async def test_calls_one_after_another_in_one_task_and_a_call_begun_while_settling_are_told() -> None:
    book, errors = CallBook(STALL_S), list[dict[str, Any]]()
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))

    async def thrice() -> None:  # one task, three calls (a test calling a handler again)
        for _ in range(3):
            await _call(book, "Reserve", lambda _: asyncio.sleep(0))
        assert len(book._tasks) == 1

    await asyncio.create_task(thrice())
    await asyncio.sleep(0)
    assert not book._tasks and not errors  # out at its task's end, once: no done callback failed
    first, late = asyncio.Event(), asyncio.Event()

    async def ends_without_a_write(ended: asyncio.Event) -> None:  # only its end can tell the stop it moved
        book.enter("Reserve")
        await ended.wait()

    calls = [asyncio.create_task(ends_without_a_write(first))]
    first_end_tallied = _tallied_once_ended(book, calls[0])
    await asyncio.sleep(0)
    settling = asyncio.create_task(book.settle(GRACE_S))
    await asyncio.sleep(0)
    calls.append(asyncio.create_task(ends_without_a_write(late)))  # begun after the stop began
    await asyncio.sleep(0)
    first.set()
    # The settle told of the first call's end and its tally made (a settle that stops there has returned in that
    # step): seen, not slept on — a settle ending late, past a sleep, passed with the late call left uncounted.
    await asyncio.wait_for(first_end_tallied.wait(), 5.0)
    assert not settling.done()  # the late call still runs
    late.set()
    settled = await asyncio.wait_for(settling, 5.0)  # told of the late call's end: not its grace
    assert not settled.working and not settled.stalled and not errors
    await asyncio.gather(*calls)
