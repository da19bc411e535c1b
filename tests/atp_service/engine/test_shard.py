"""ShardActor over the simulation's in-process log (tests/sim/simlog.py): appends stay in flight
until the test answers them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from atp_service.engine.clock import ManualClock
from atp_service.engine.messages import Envelope
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from reservation import DomainError, Ledger, Reason, Unavailable, reserve
from tests.atp_service.engine.helpers import until_turns
from tests.reservation.helpers import cmd, ledger_with
from tests.sim.simlog import SimLog
from tests.sim.world import sim_config


def one_shard(log: SimLog, units: int = 10, metrics: EngineMetrics | None = None, **settings: Any) -> ShardActor:
    """Shard 0 over ``log``, ``units`` of A at S1, with the simulation's shard settings (``settings`` replaced)."""
    shard_settings = dataclasses.replace(sim_config().shard_settings, **settings)
    return ShardActor(0, ledger_with({("A", "S1"): units}), log, ManualClock(), shard_settings, 0,  # type: ignore[arg-type]
                      metrics)


async def test_a_maintenance_pass_with_nothing_due_does_not_hold_new_work_behind_appends_in_flight() -> None:
    """Every shard is asked to maintain itself at once every pass; draining its pipeline each time
    was a stall of every shard every 100 ms, at any load."""
    log = SimLog()
    actor = one_shard(log)
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
    # One entry in flight at most: the burst's first message takes the idle actor's turn, the
    # rest queue behind its entry, and the third meets a mailbox that is not empty.
    log = SimLog()
    actor = one_shard(log, max_queue_delay_ms=50, pipeline_depth=1)
    actor.start()
    try:
        def nothing(ledger: Ledger, now: int) -> None:
            return None

        late = actor.submit(nothing)
        time.sleep(0.1)  # noqa: ASYNC251  (the loop stalls: the message waits past max_queue_delay_ms)
        await late
        await until_turns(lambda: actor._mailbox.empty() and actor._parked, "the shard is idle again", turns=20)
        burst = [actor.submit(lambda ledger, now, rid=rid: reserve(ledger, cmd(rid, ("A", "S1", 1)), now))
                 for rid in ("r1", "r2", "r3")]  # in one turn of the loop

        def pumped() -> bool:
            log.pump("ok")
            return all(answer.done() for answer in burst)

        await until_turns(pumped, "the burst is answered")
        await asyncio.gather(*burst)
    finally:
        await actor.stop()


async def test_a_command_failing_unexpectedly_takes_back_only_its_own_change() -> None:
    log = SimLog()
    actor = one_shard(log)
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
    actor = one_shard(log)
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


async def parked(actor: ShardActor) -> None:
    await until_turns(lambda: actor._parked, f"shard {actor.shard} waits for mail", turns=50)


async def test_a_sender_takes_a_parked_shards_turn_at_once_and_is_answered_only_once_it_is_durable() -> None:
    log = SimLog()
    actor = one_shard(log)
    actor.start()
    try:
        await parked(actor)
        answer = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        # Decided and sent before the sender awaits anything: no turn of the loop, no mailbox.
        assert actor.ledger.reservation("r1") is not None and len(log.pending) == 1 and actor._mailbox.empty()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not answer.done()  # R7: not before its entry is durable
        log.pump("ok")
        rec, replayed = await answer
        assert rec.reservation_id == "r1" and not replayed and actor.seq == 1
    finally:
        await actor.stop()


async def test_work_queued_for_a_shard_is_never_overtaken_by_a_later_sender() -> None:
    """Only a parked actor with nothing waiting lends its turn: once anything waits (a message not
    yet taken, or one held back behind a full pipeline), every later message queues behind it and
    all run in the order sent."""
    log = SimLog()
    actor = one_shard(log, pipeline_depth=1)
    order: list[str] = []

    def noting(rid: str) -> Any:
        def work(ledger: Ledger, now: int) -> Any:
            order.append(rid)
            return reserve(ledger, cmd(rid, ("A", "S1", 1)), now)
        return work

    actor.start()
    try:
        await parked(actor)
        first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        actor._mailbox.put_nowait(Envelope(noting("r0"), first))  # queued; the actor has not run since
        answers = [first, actor.submit(noting("r1"))]
        assert order == []  # r1 waits behind r0
        await until_turns(lambda: len(log.pending) == 1, "r0 and r1 are sent")
        answers.append(actor.submit(noting("r2")))  # the pipeline is full: queued
        await until_turns(lambda: bool(actor._set_aside), "the actor holds r2 back behind the full pipeline")
        answers.append(actor.submit(noting("r3")))  # must queue behind r2, not take a turn of its own
        assert not actor._parked and order == ["r0", "r1"]

        def pumped() -> bool:
            log.pump("ok")
            return all(answer.done() for answer in answers)

        await until_turns(pumped, "every answer is durable")
        assert [rec.reservation_id for rec, _ in await asyncio.gather(*answers)] == ["r0", "r1", "r2", "r3"]
        assert order == ["r0", "r1", "r2", "r3"]
    finally:
        await actor.stop()


async def test_a_senders_turn_that_raises_stops_the_shard_as_the_actors_own_would() -> None:
    actor = one_shard(SimLog())
    failed: list[ShardActor] = []
    actor.on_failure.append(failed.append)
    actor.start()
    try:
        await parked(actor)

        def broken_seal(now: int, answers: list[Any]) -> None:
            raise RuntimeError("a bug outside any command")

        actor._seal = broken_seal  # type: ignore[method-assign]
        answer = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        with pytest.raises(Unavailable) as err:
            await answer
        assert err.value.reason == Reason.SHARD_STOPPED and failed == [actor]
        await until_turns(lambda: actor._task is not None and actor._task.done(), "the actor's task ends")
        with pytest.raises(Unavailable):
            actor.submit(lambda ledger, now: None)
    finally:
        await actor.stop()


async def test_work_sent_from_inside_a_senders_turn_is_queued_not_nested() -> None:
    log = SimLog()
    actor = one_shard(log)
    order: list[str] = []
    inner: list[asyncio.Future[Any]] = []

    def outer(ledger: Ledger, now: int) -> Any:
        order.append("outer begins")
        inner.append(actor.submit(lambda ledger, now: order.append("inner")))
        order.append("outer ends")
        return reserve(ledger, cmd("r1", ("A", "S1", 1)), now)

    actor.start()
    try:
        await parked(actor)
        first = actor.submit(outer)
        assert order == ["outer begins", "outer ends"] and actor._mailbox.empty() is False

        def pumped() -> bool:
            log.pump("ok")
            return first.done() and inner[0].done()

        await until_turns(pumped, "both are answered")
        assert order == ["outer begins", "outer ends", "inner"]
        await asyncio.gather(first, *inner)
        await parked(actor)  # and the actor takes mail again
    finally:
        await actor.stop()


async def test_the_mailbox_depth_gauge_comes_back_to_what_waits_once_the_shard_is_idle_again() -> None:
    """``atp_shard_mailbox_depth`` (alert ATPShardMailboxDeep): a backlog refused at once when an
    append fails must not stay on the gauge of a shard whose later messages all take the parked
    actor's turn (none goes through the actor's own turn, where the gauge is set)."""
    registry = CollectorRegistry()
    log = SimLog()
    actor = one_shard(log, 100, EngineMetrics(registry), pipeline_depth=1, batch_max=2)

    def depth() -> float | None:
        return registry.get_sample_value("atp_shard_mailbox_depth", {"shard": "0"})

    def rsv(rid: str) -> Any:
        return lambda ledger, now: reserve(ledger, cmd(rid, ("A", "S1", 1)), now)

    actor.start()
    try:
        await until_turns(lambda: actor._task is not None and actor._mailbox.empty(), "started", turns=20)
        for _ in range(5):
            await asyncio.sleep(0)
        answers = [actor.submit(rsv(f"r{i}")) for i in range(12)]  # a backlog behind one entry in flight
        await until_turns(lambda: len(log.pending) == 1 and len(actor._mailbox) > 0, "r0 in flight, the rest wait")
        log.pump("ok")  # r0 durable: the actor takes the next batch of two; the rest still wait
        await until_turns(lambda: len(log.pending) == 1 and (depth() or 0) > 0, "the next batch in flight")
        backlog = depth()
        log.pump("lost")  # Redis lost it: every waiting message is refused at once, the shard settles
        for _ in range(50):
            log.pump("ok")
            if all(a.done() for a in answers) and not actor.in_doubt and actor._mailbox.empty():
                break
            await asyncio.sleep(0)
        assert all(a.done() for a in answers) and not actor.in_doubt and actor._mailbox.empty()
        for a in answers:
            if not a.cancelled():
                a.exception()

        for i in range(3):  # light traffic afterwards: one message at a time, nothing waits
            later = actor.submit(rsv(f"later{i}"))
            await until_turns(lambda: bool(log.pending), "appended")
            log.pump("ok")
            await later
        assert len(actor._mailbox) == 0 and not actor._set_aside
        assert depth() == 0, f"gauge says {depth()} waiting (the backlog refused long ago was {backlog}); 0 wait"
    finally:
        await actor.stop()
