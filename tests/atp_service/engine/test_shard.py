"""ShardActor over the simulation's in-process log (tests/sim/simlog.py): appends stay in flight
until the test answers them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from atp_service.engine.clock import ManualClock
from atp_service.engine.shard import ShardActor
from reservation import DomainError, Ledger, Reason, Unavailable, reserve
from tests.atp_service.engine.helpers import until_turns
from tests.reservation.helpers import cmd, ledger_with
from tests.sim.simlog import SimLog
from tests.sim.world import sim_config


async def test_a_maintenance_pass_with_nothing_due_does_not_hold_new_work_behind_appends_in_flight() -> None:
    """Every shard is asked to maintain itself at once every pass; draining its pipeline each time
    was a stall of every shard every 100 ms, at any load."""
    log = SimLog()
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), log, ManualClock(), sim_config().shard_settings, 0)  # type: ignore[arg-type]
    actor.start()
    try:
        first = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        await until_turns(lambda: len(log.pending) == 1, "the first batch is appended", turns=200)
        actor.request_maintenance()  # nothing due: no snapshot, no fact old enough to forget
        second = actor.submit(lambda ledger, now: reserve(ledger, cmd("r2", ("A", "S1", 1)), now))
        await until_turns(lambda: len(log.pending) == 2, "the second batch is decided while the first is in flight",
                          turns=200)
        log.pump("ok")
        assert [rec.reservation_id for rec, _ in await asyncio.gather(first, second)] == ["r1", "r2"]
    finally:
        await actor.stop()


async def test_an_idle_shard_does_not_shed_a_burst_for_a_backlog_long_gone() -> None:
    """Work is shed for what waits now (``max_queue_delay_ms``): a shard that went idle after a
    message that had waited too long takes the next burst, even with no maintenance message between."""
    settings = dataclasses.replace(sim_config().shard_settings, max_queue_delay_ms=50)
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), SimLog(), ManualClock(), settings, 0)  # type: ignore[arg-type]
    actor.start()
    try:
        def nothing(ledger: Ledger, now: int) -> None:
            return None

        late = actor.submit(nothing)
        time.sleep(0.1)  # noqa: ASYNC251  (the loop stalls: the message waits past max_queue_delay_ms)
        await late
        await until_turns(lambda: actor._mailbox.empty(), "the shard is idle again", turns=20)
        first, second = actor.submit(nothing), actor.submit(nothing)  # a burst: both in one turn of the loop
        await asyncio.gather(first, second)
    finally:
        await actor.stop()


async def test_a_command_failing_unexpectedly_takes_back_only_its_own_change() -> None:
    log = SimLog()
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), log, ManualClock(), sim_config().shard_settings, 0)  # type: ignore[arg-type]
    actor.start()

    def half_then_bug(ledger: Ledger, now: int) -> None:
        reserve(ledger, cmd("r-bug", ("A", "S1", 4)), now)
        raise KeyError("a bug after half the work")

    try:
        first = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        buggy = actor.submit(half_then_bug)
        last = actor.submit(lambda ledger, now: reserve(ledger, cmd("r2", ("A", "S1", 2)), now))
        await until_turns(lambda: len(log.pending) == 1, "one batch of the three is appended", turns=200)
        log.pump("ok")
        with pytest.raises(DomainError) as err:
            await buggy
        assert err.value.reason == Reason.INTERNAL
        await asyncio.gather(first, last)
        assert actor.failure is None
        assert actor.ledger.quantities("A", "S1").reserved == 3 and actor.ledger.reservation("r-bug") is None
    finally:
        await actor.stop()


async def test_a_shard_whose_task_ends_says_so_and_answers_unavailable_instead_of_going_silent() -> None:
    log = SimLog()
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), log, ManualClock(), sim_config().shard_settings, 0)  # type: ignore[arg-type]
    failed: list[ShardActor] = []
    actor.on_failure.append(failed.append)

    def broken_seal(now: int, answers: list[Any]) -> None:
        raise RuntimeError("a bug outside any command")

    actor._seal = broken_seal  # type: ignore[method-assign]
    actor.start()
    try:
        in_hand = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        with pytest.raises(Unavailable) as err:
            await in_hand  # the batch the actor held when it died is answered, not left to its deadline
        assert err.value.reason == Reason.SHARD_STOPPED
        await until_turns(lambda: failed == [actor], "the failure is reported", turns=200)
        assert isinstance(actor.failure, RuntimeError)
        with pytest.raises(Unavailable) as err:
            actor.submit(lambda ledger, now: None)
        assert err.value.reason == Reason.SHARD_STOPPED
    finally:
        await actor.stop()
