"""Small asyncio helpers shared by the service's long-running parts."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

RECANCEL_S = 1.0
"""How long ``cancel_and_wait`` lets a cancelled task unwind before it asks again (see there)."""


async def in_turns(steps: Generator[None, None, Any]) -> None:
    """Run ``steps`` (work that yields between slices) to its end, letting the event loop run other
    tasks at each yield; stopped part-way (cancelled), the generator is closed, so its ``finally``
    puts back what it had not done."""
    try:
        for _ in steps:
            await asyncio.sleep(0)
    finally:
        steps.close()


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Stop a background task and wait until it has unwound (its cancellation is not an error).

    One ``cancel()`` is not enough on Python 3.11: ``asyncio.wait_for`` returns the inner result and
    drops a cancellation that arrives in the loop turn in which its inner future finished (CPython
    gh-86296, fixed in 3.12 by basing ``wait_for`` on ``asyncio.timeout``). redis-py sends every
    command through ``wait_for`` when a socket timeout is set (all of ours), so a stop landing just
    as a loop's command was written left that loop running for ever — the service's stop hung on
    it. The cancellation is therefore repeated until the task has ended (a task's own clean-up
    after a cancellation must finish within ``RECANCEL_S`` or shield itself). The caller's own
    cancellation is not swallowed: a bounded stop (``atp-service serve``) is really bounded."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=RECANCEL_S)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()  # a task that failed on its own still says so


async def each_to_its_end(*stops: Callable[[], Awaitable[Any]]) -> None:
    """Each of ``stops`` called and awaited in turn, those after one that failed too: a stop ends everything it
    started, a part whose task failed (said when it ended) included. The first failure is raised once the last
    has ended; the caller's own cancellation at once."""
    failure: Exception | None = None
    for stop in stops:
        try:
            await stop()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


async def run_bounded(work: Callable[[], Awaitable[Any]], bound_s: float, name: str) -> None:
    """``work()`` in a task of its own for ``bound_s`` at most, then cancelled until it has ended
    (``cancel_and_wait``); its failure is raised. The caller cancelled, ``work`` is cancelled for
    good (``cancel_for_good``) and the cancellation raised at once: nothing is left running unowned.
    ``work`` is called in the task's first step: a task cancelled before it (a killed process's, asyncio.run's
    end) makes no coroutine to drop unstarted ('coroutine ... was never awaited').

    Not ``asyncio.wait_for``: on Python 3.11 it returns the inner result and drops a cancellation of
    its caller that lands in the turn the inner work ends, and it cancels work past its bound once —
    a cancellation redis-py's own ``wait_for`` can lose (see ``cancel_and_wait``), so that work waiting
    for a Redis that does not answer went on for ever, and its caller with it."""
    task = asyncio.get_running_loop().create_task(_called(work), name=name)
    task.add_done_callback(exception_seen)  # its failure is the caller's, unless the caller is gone
    try:
        await asyncio.wait((task,), timeout=bound_s)
        await cancel_and_wait(task)
    except BaseException:
        cancel_for_good(task)
        raise


async def _called(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def cancel_for_good(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` now, and again every ``RECANCEL_S`` until it has ended, without waiting for
    it: ``cancel_and_wait`` for a caller that cannot wait (it is being cancelled or closed itself).
    One ``cancel()`` can be lost on Python 3.11 (see ``cancel_and_wait``), leaving the task running
    on its own with nobody to stop it."""
    if not task.done():
        task.cancel()
        task.get_loop().call_later(RECANCEL_S, cancel_for_good, task)


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` where the running task was cancelled and the cancellation was lost on the way
    (redis-py's ``wait_for`` on Python 3.11: see ``cancel_and_wait``): a loop calling it each round ends at its
    next round whoever cancelled it once (asyncio.run's one cancel at the loop's end, a TaskGroup's)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def finish_uncancelled(fut: asyncio.Future[Any]) -> Any:
    """``await fut``, but ``fut`` itself is never cancelled: a cancellation of the caller is raised
    once ``fut`` has finished (a cancellation repeated meanwhile stops only the waiting). For work
    that breaks when cancelled half-way, such as grpcio's ``Server.start()``."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait((fut,))
        raise


def task_stacks(limit: int = 8) -> str:
    """What every asyncio task of the running loop waits on (SIGUSR1, a shutdown that hangs). A task
    whose stack Python cannot print — a gRPC (Cython) coroutine's frame has no line number, and
    ``print_stack`` then raises ``TypeError`` — is named with the frames it has: one such task took the
    whole dump with it, when it is most needed."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        try:
            task.print_stack(limit=limit, file=out)
        except Exception as exc:
            names = " <- ".join(f"{frame.f_code.co_name} ({frame.f_code.co_filename})"
                                for frame in reversed(task.get_stack(limit=limit)))
            print(f"Stack for {task!r} not printable ({exc!r}): {names}", file=out)
    return out.getvalue()


def exception_seen(fut: asyncio.Future[Any]) -> None:
    """Done callback: mark a finished future's exception as retrieved (whoever awaits it still gets
    it), so a caller gone early leaves no "exception was never retrieved" log line."""
    if not fut.cancelled():
        fut.exception()


def wake_oldest(waiters: deque[asyncio.Future[None]]) -> bool:
    """Wake the oldest of ``waiters`` still waiting (dropping those cancelled on the way); False
    when none was left. A bounded resource hands itself over this way: the one woken owns it."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False


def keep(held: set[asyncio.Task[Any]], work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """``work`` in a task ``held`` references until it ends: the event loop keeps only a weak
    reference to a task, so one nobody holds may be collected before it finishes."""
    task = asyncio.get_running_loop().create_task(work)
    held.add(task)
    task.add_done_callback(held.discard)
    return task


async def all_kept_ended(held: set[asyncio.Task[Any]]) -> None:
    """Until every task of ``held`` (see ``keep``) has ended, those started meanwhile included: work
    that one of them starts (a group given up while another is handed over) is not left running
    past the caller. Their failures are theirs to report (an ``exception_seen`` callback)."""
    while running := [task for task in held if not task.done()]:
        await asyncio.gather(*running, return_exceptions=True)
