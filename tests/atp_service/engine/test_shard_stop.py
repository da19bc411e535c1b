"""A shard's stop under load ends, and ends everything of the shard, whatever befalls it: cancelled itself in the
turn its drain ends, cancelled mid-drain, or past its bound with a drain whose Redis client loses a cancellation
(redis-py's ``asyncio.wait_for`` on Python 3.11). Over the simulation's log; the cancellations land at the await
they are aimed at (a done callback of the drain's task, a fence that never answers), never after a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import warnings
from typing import Any

import pytest

from atp_service.engine.shard import ShardActor
from atp_service.storage.durability import LogDiverged
from reservation import Reason, Unavailable, reserve
from tests.atp_service.engine.helpers import until_turns
from tests.atp_service.engine.test_shard import one_shard
from tests.reservation.helpers import cmd
from tests.sim.simlog import SimLog

GUARD_S = 10.0
"""The test's own bound on a stop that should end at once (after the fix: its drain's bound plus one re-cancel)."""


def _reserve(rid: str) -> Any:
    return lambda ledger, now: reserve(ledger, cmd(rid, ("A", "S1", 1)), now)


def _drain_task() -> asyncio.Task[Any] | None:
    found = [t for t in asyncio.all_tasks() if t.get_name() == "shard-0-drain"]  # a stop's (``run_bounded``)
    return found[0] if found else None


def _actor_ended(actor: ShardActor) -> bool:
    return actor._task is not None and actor._task.done()


async def _stop_cancelled_as_its_drain_ends(log: SimLog) -> tuple[ShardActor, asyncio.Future[Any], asyncio.Task[None]]:
    """Shard 0 over ``log`` with r1's append in flight, its stop begun and draining it, and the stop's task set to be
    cancelled in the turn the drain ends: the actor, r1's answer and the stop's task."""
    actor = one_shard(log)
    actor.start()
    answer = actor.submit(_reserve("r1"))
    await until_turns(lambda: len(log.pending) == 1, "r1 in flight")
    stopping = asyncio.get_running_loop().create_task(actor.stop())
    await until_turns(lambda: _drain_task() is not None, "the stop drains the shard")
    drain = _drain_task()
    assert drain is not None
    drain.add_done_callback(lambda _: stopping.cancel())  # the cancellation lands as the drain ends
    return actor, answer, stopping


async def test_a_stop_cancelled_in_the_turn_its_drain_ends_is_cancelled_not_finished_as_if_never_asked() -> None:
    log = SimLog()
    actor, answer, stopping = await _stop_cancelled_as_its_drain_ends(log)
    log.pump("ok")
    with pytest.raises(asyncio.CancelledError):
        await stopping  # asyncio.wait_for (3.11) returned the drain's result and dropped it: the stop went on
    assert (await answer)[0].reservation_id == "r1"  # durable before the stop ended, answered (R7)
    await until_turns(lambda: _actor_ended(actor), "the actor's task ended with the stop")


async def test_a_stop_cancelled_mid_drain_leaves_no_actor_running_and_nobody_waiting() -> None:
    log = SimLog()
    actor = one_shard(log, pipeline_depth=1)
    actor.start()
    first = actor.submit(_reserve("r1"))
    await until_turns(lambda: len(log.pending) == 1, "r1 in flight")
    second = actor.submit(_reserve("r2"))  # waits behind r1 (one entry in flight at most)
    await until_turns(lambda: bool(actor._set_aside), "r2 taken and set aside")
    stopping = asyncio.get_running_loop().create_task(actor.stop())
    await until_turns(lambda: _drain_task() is not None, "the stop drains the shard")
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await until_turns(lambda: _actor_ended(actor), "the actor's task ended with the stop")
    with pytest.raises(Unavailable) as refused:
        await second  # not applied by a shard whose stop began, nor left to its deadline
    assert refused.value.reason == Reason.SHUTTING_DOWN
    log.pump("ok")
    assert (await first)[0].reservation_id == "r1"  # in flight: answered once durable (R7)
    assert not log.pending, "a stopped shard sent no more appends"


class _StuckRedis(SimLog):
    """A Redis that stopped answering, through a client that loses one cancellation: redis-py's
    ``wait_for`` (Python 3.11) returns a command's outcome when the cancel lands as it ends."""

    async def fence(self, shard: int) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)  # the settle's next try, to a Redis still not answering


async def test_a_stop_whose_drain_loses_its_cancellation_past_the_bound_still_ends() -> None:
    log = _StuckRedis()
    actor = one_shard(log, redis_timeout_s=0.05)  # the drain's bound: 2 x redis_timeout_s
    actor.start()
    answer = actor.submit(_reserve("r1"))
    await until_turns(lambda: len(log.pending) == 1, "r1 in flight")
    stopping = asyncio.get_running_loop().create_task(actor.stop())
    try:
        await until_turns(lambda: _drain_task() is not None, "the stop drains the shard")
        log.pump("lost")  # in doubt: the stop's drain settles it, and Redis does not answer the fence
        with pytest.raises(Unavailable):
            await answer
        ended, _ = await asyncio.wait([stopping], timeout=GUARD_S)
        assert ended, "the stop waited for ever on a settle whose one cancellation was lost"
        await stopping
        assert _actor_ended(actor)
    finally:
        for task in (stopping, _drain_task()):
            if task is not None:
                task.cancel()


async def test_a_log_found_diverged_by_a_drain_that_ends_as_its_stop_is_cancelled_is_still_said(
        caplog: pytest.LogCaptureFixture) -> None:
    """The stop's drain settles an append in doubt and finds in its place an entry the shard never sent
    (LogDiverged), and the stop is cancelled in the turn the drain ends: ``shard_stop_diverged`` is said all
    the same (before: the stop's ``except LogDiverged`` was skipped by its cancellation, and ``run_bounded``
    had marked the drain's failure seen: nothing said that another writer wrote the group's stream, E10)."""
    log = SimLog()
    _, answer, stopping = await _stop_cancelled_as_its_drain_ends(log)
    log.logs[0].append((1, b"an entry this shard never sent"))  # another writer, where r1's append went
    with caplog.at_level(logging.ERROR, logger="atp_service.engine.shard"):
        log.pump("lost")  # r1 in doubt: the drain settles it, and finds the other entry there
        with pytest.raises(Unavailable):
            await answer
        with pytest.raises(asyncio.CancelledError):
            await stopping
    said = [r for r in caplog.records if getattr(r, "event", None) == "shard_stop_diverged"]
    assert len(said) == 1, "the log the stop found diverged was never said"
    assert said[0].exc_info is not None and isinstance(said[0].exc_info[1], LogDiverged)


async def test_a_drain_cancelled_before_its_first_step_leaves_no_coroutine_never_awaited() -> None:
    """A killed process's tasks end wherever they are, one created after the kill at once (tests/sim/process.py's
    task factory; asyncio.run's end cancels all tasks alike): a drain task cancelled before its first step dropped
    the ``_drain()`` coroutine made for it unstarted — 'coroutine ShardActor._drain was never awaited' in the
    simulation's runs. The drain is made in its task, so a task that never runs makes none; the stop still ends."""
    log = SimLog()
    actor = one_shard(log)
    actor.start()
    loop = asyncio.get_running_loop()

    def dead_process_tasks(loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        task.cancel()  # every task made from now on ends before its first step: the stop's drain is one
        return task

    loop.set_task_factory(dead_process_tasks)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            await actor.stop()  # awaited in this task, made before: no new task but the drain's
            gc.collect()
    finally:
        loop.set_task_factory(None)
    assert [str(w.message) for w in seen if "never awaited" in str(w.message)] == []
    assert _actor_ended(actor)
