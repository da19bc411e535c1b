"""The shard actor's mailbox: asyncio.Queue's semantics where the actor relies on them (FIFO, the
bound, wake-ups), and cancel-safety of both waits at every point (R8)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from atp_service.engine.mailbox import Mailbox, MailboxEmpty, MailboxFull


async def turns(n: int = 5) -> None:
    """Let every task that is ready run (each wake-up takes a turn or two of the loop)."""
    for _ in range(n):
        await asyncio.sleep(0)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def full_box(bound: int = 2) -> Mailbox[str]:
    box: Mailbox[str] = Mailbox(bound)
    for n in range(bound):
        box.put_nowait(f"m{n}")
    return box


def test_fifo_bound_and_sizes() -> None:
    box: Mailbox[int] = Mailbox(3)
    assert box.empty() and not box.full() and len(box) == 0
    for n in range(3):
        box.put_nowait(n)
    assert box.full() and not box.empty() and len(box) == 3
    with pytest.raises(MailboxFull):
        box.put_nowait(3)
    assert [box.get_nowait() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(MailboxEmpty):
        box.get_nowait()
    assert box.empty() and "0/3" in repr(box)


def test_a_mailbox_is_bounded() -> None:
    with pytest.raises(ValueError):
        Mailbox(0)


async def test_get_waits_for_an_item_and_takes_them_in_order() -> None:
    box: Mailbox[int] = Mailbox(5)
    got = spawn(box.get())
    await turns()
    assert not got.done()
    box.put_nowait(1)
    box.put_nowait(2)  # the reader is woken once; the second stays
    assert await got == 1
    assert await box.get() == 2  # an item waiting: no wait at all


async def test_a_get_woken_then_drained_waits_again() -> None:
    box: Mailbox[int] = Mailbox(5)
    got = spawn(box.get())
    await turns()
    box.put_nowait(1)
    assert box.drain() == [1]  # taken (a shard failing) before the woken reader ran
    await turns()
    assert not got.done()
    box.put_nowait(2)
    assert await got == 2


async def test_one_reader() -> None:
    box: Mailbox[int] = Mailbox(5)
    first = spawn(box.get())
    await turns()
    with pytest.raises(AssertionError, match="one reader"):
        await box.get()
    first.cancel()
    await turns()


async def test_put_waits_for_room_and_putters_are_woken_in_order() -> None:
    box = full_box(2)
    putters = [spawn(box.put(f"p{n}")) for n in range(3)]
    await turns()
    assert not any(p.done() for p in putters) and len(box) == 2
    assert box.get_nowait() == "m0"
    await turns()
    assert [p.done() for p in putters] == [True, False, False]
    assert [await box.get(), await box.get()] == ["m1", "p0"]  # two slots free: two putters woken
    await turns()
    assert all(p.done() for p in putters)
    assert box.drain() == ["p1", "p2"]


async def test_drain_wakes_a_putter_per_slot_freed() -> None:
    box = full_box(2)
    putters = [spawn(box.put(f"p{n}")) for n in range(3)]
    await turns()
    assert box.drain() == ["m0", "m1"]
    await turns()
    assert [p.done() for p in putters] == [True, True, False]
    assert list(box.drain()) == ["p0", "p1"]
    await turns()
    assert putters[2].done() and box.drain() == ["p2"]


async def test_put_nowait_may_overtake_a_woken_putter_which_then_waits_again() -> None:
    box = full_box(1)
    putter = spawn(box.put("late"))
    await turns()
    box.get_nowait()  # wakes the putter ...
    box.put_nowait("barged")  # ... but the room is gone before it runs (as with asyncio.Queue)
    await turns()
    assert not putter.done() and box.drain() == ["barged"]
    await turns()
    assert putter.done() and box.drain() == ["late"]


async def test_a_cancelled_waiting_put_puts_nothing_and_leaves_the_line() -> None:
    box = full_box(1)
    gone, kept = spawn(box.put("gone")), spawn(box.put("kept"))
    await turns()
    gone.cancel()
    await turns()
    assert gone.cancelled() and len(box._putters) == 1
    assert box.get_nowait() == "m0"  # the slot goes to the putter still waiting
    await turns()
    assert kept.done() and box.drain() == ["kept"]


async def test_a_put_cancelled_before_its_task_ran_is_skipped_by_the_wake_up() -> None:
    """Cancelled (its future too), then an item is taken before the putter's task runs: the
    wake-up passes it over for the next putter, and its own clean-up finds it gone already."""
    box = full_box(1)
    gone, kept = spawn(box.put("gone")), spawn(box.put("kept"))
    await turns()
    gone.cancel()
    box.get_nowait()
    await turns()
    assert gone.cancelled() and kept.done() and not box._putters
    assert box.drain() == ["kept"]


async def test_a_put_woken_but_cancelled_before_it_ran_hands_its_wake_up_on() -> None:
    box = full_box(1)
    woken, kept = spawn(box.put("woken")), spawn(box.put("kept"))
    await turns()
    box.get_nowait()  # wakes the first putter ...
    assert len(box._putters) == 1 and not woken.done()
    woken.cancel()  # ... which is cancelled before it runs: nothing put, the next putter goes
    await turns()
    assert woken.cancelled() and kept.done()
    assert box.drain() == ["kept"]


async def test_a_put_woken_and_cancelled_after_the_room_went_wakes_nobody() -> None:
    box = full_box(1)
    woken, waiting = spawn(box.put("woken")), spawn(box.put("waiting"))
    await turns()
    box.get_nowait()
    box.put_nowait("barged")  # the room is gone again
    woken.cancel()
    await turns()
    assert woken.cancelled() and not waiting.done() and len(box._putters) == 1
    assert box.get_nowait() == "barged"  # the next slot freed is the waiting putter's
    await turns()
    assert waiting.done() and box.drain() == ["waiting"]


async def test_a_cancelled_waiting_get_takes_nothing() -> None:
    box: Mailbox[int] = Mailbox(2)
    got = spawn(box.get())
    await turns()
    got.cancel()
    await turns()
    assert got.cancelled() and box._getter is None
    box.put_nowait(1)
    assert await box.get() == 1  # a new reader may wait now


async def test_a_get_cancelled_then_put_to_before_it_ran_leaves_the_item() -> None:
    """Its future is cancelled: the put finds the reader's wait done and does not touch it."""
    box: Mailbox[int] = Mailbox(2)
    got = spawn(box.get())
    await turns()
    got.cancel()
    box.put_nowait(1)
    await turns()
    assert got.cancelled() and box.drain() == [1]


async def test_a_get_woken_but_cancelled_before_it_ran_leaves_the_item() -> None:
    box: Mailbox[int] = Mailbox(2)
    got = spawn(box.get())
    await turns()
    box.put_nowait(1)  # wakes the reader ...
    assert box._getter is not None and box._getter.done() and not got.done()
    got.cancel()  # ... cancelled before it runs: the item stays first in line
    box.put_nowait(2)
    await turns()
    assert got.cancelled() and box._getter is None
    assert [await box.get(), box.get_nowait()] == [1, 2]


async def test_against_asyncio_queue() -> None:
    """Random puts, gets, drains and cancellations, each done to a Mailbox and to an asyncio.Queue
    in lockstep: both hold the same items throughout and every task ends the same way."""
    for seed in range(40):
        rng = random.Random(seed)
        box: Mailbox[int] = Mailbox(3)
        queue: asyncio.Queue[int] = asyncio.Queue(3)
        puts: list[tuple[asyncio.Task[Any], asyncio.Task[Any]]] = []
        gets: list[tuple[asyncio.Task[Any], asyncio.Task[Any]]] = []
        for step in range(150):
            op = rng.choice(("put_nowait", "put", "get", "get_nowait", "drain", "cancel", "turn", "turn"))
            if op == "put_nowait":
                assert _outcome(box.put_nowait, step) == _outcome(queue.put_nowait, step)
            elif op == "put":
                puts.append((spawn(box.put(step)), spawn(queue.put(step))))
            elif op == "get" and all(mine.done() for mine, _ in gets):  # one reader
                gets.append((spawn(box.get()), spawn(queue.get())))
            elif op == "get_nowait":
                assert _outcome(box.get_nowait) == _outcome(queue.get_nowait)
            elif op == "drain":
                assert box.drain() == [queue.get_nowait() for _ in range(queue.qsize())]
            elif op == "cancel" and puts + gets:
                for task in rng.choice(puts + gets):
                    task.cancel()
            else:
                await asyncio.sleep(0)
            assert list(box._items) == list(queue._queue), (seed, step)  # type: ignore[attr-defined]
        for task in [task for pair in puts + gets for task in pair]:
            task.cancel()
        await asyncio.gather(*[task for pair in puts + gets for task in pair], return_exceptions=True)
        assert [_ended(mine) for mine, _ in puts + gets] == [_ended(theirs) for _, theirs in puts + gets], seed


def _outcome(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except (MailboxFull, asyncio.QueueFull):
        return "full"
    except (MailboxEmpty, asyncio.QueueEmpty):
        return "empty"


def _ended(task: asyncio.Task[Any]) -> Any:
    return "cancelled" if task.cancelled() else task.result()
