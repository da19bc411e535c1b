"""Callers of an order spanning groups while its saga waits on a group slow to answer (a peer past its
step's deadline, a log write in doubt): each caller's saga waits for the order's lock. A caller that
goes away (its deadline, a disconnect) before its saga has begun leaves nothing of it behind (R8: not
applied at all); one whose saga has begun leaves it to finish (R8: applied whole)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reservation import State
from tests.atp_service.engine.helpers import running, until_turns
from tests.atp_service.engine.test_order_sagas import Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


class Gate:
    """``shard``'s work held back (its answer not given) until ``open``: a group slow to answer."""

    def __init__(self, rig: Rig, shard: int) -> None:
        self.actor = rig.engine.actors[shard]
        self.held: list[tuple[Any, asyncio.Future[Any]]] = []
        self._submit = self.actor.submit
        self.actor.submit = self._later  # type: ignore[method-assign]

    def _later(self, work: Any) -> asyncio.Future[Any]:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append((work, answer))
        return answer

    def open(self) -> None:
        self.actor.submit = self._submit  # type: ignore[method-assign]
        for work, answer in self.held:
            self._submit(work).add_done_callback(lambda done, answer=answer: _pass_on(done, answer))


def _pass_on(done: asyncio.Future[Any], answer: asyncio.Future[Any]) -> None:
    error = done.exception()
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(done.result())


async def test_callers_gone_before_an_order_s_saga_began_leave_no_saga_waiting(rig: Rig) -> None:
    """A Confirm's saga waits on group 1; meanwhile callers read, confirm and retry the Reserve of the order,
    each giving up before its saga's turn came (a client's deadline, retried). Every one of those sagas was
    kept waiting for the order's lock, shielded from its caller: a queue without bound (one saga per call,
    each run in turn for nobody once the group answers — a peer unreachable for minutes queued one per
    call). Now only the saga that began waits; the Confirm is carried through once group 1 answers."""
    engine = rig.engine
    sagas = engine.orders
    assert sagas is not None
    cmd = rig.cmd("o1")
    assert (await rig.run(engine.reserve(cmd)))[0].state == State.HELD
    gate = Gate(rig, 1)
    confirming = asyncio.ensure_future(engine.confirm("o1"))
    await until_turns(lambda: bool(gate.held), "the confirmation's saga waits on group 1")
    assert len(sagas._tasks) == 1
    callers = [lambda: engine.get_reservation("o1"), lambda: engine.confirm("o1"), lambda: engine.reserve(cmd)]
    for n in range(30):
        call = asyncio.ensure_future(callers[n % len(callers)]())
        await until_turns(lambda: len(sagas._tasks) == 2, "the caller's saga waits for the order's lock")
        call.cancel()
        await until_turns(call.done, "the caller is gone")
        await until_turns(lambda: len(sagas._tasks) == 1, f"caller {n}'s saga, never begun, is left waiting")
    gate.open()
    await rig.pump_until_done([confirming])
    assert confirming.result().state == State.CONFIRMED
    assert rig.quantities() == [(0, 3), (0, 3)]
    assert not sagas._tasks and not sagas._locks
    assert engine.routes.attempts.get("o1") is None  # the Reserve retries gone left no attempt counted


async def test_an_order_whose_caller_went_after_its_saga_began_is_counted_once_decided(rig: Rig) -> None:
    """A Reserve of an order spanning groups whose caller goes while its saga waits on group 1: the saga, begun,
    goes on to its end (R8: applied whole), and its hold is counted ``held`` then, as a ReserveStream item and a
    Confirm are whatever their caller does. Before, it was counted in the caller's task after the answer: a hold
    made was counted nowhere."""
    engine = rig.engine
    sagas = engine.orders
    assert sagas is not None
    gate = Gate(rig, 1)
    reserving = asyncio.ensure_future(engine.reserve(rig.cmd("o1")))
    for _ in range(400):  # the order's record made durable at its home first (appends answered), then its parts
        await asyncio.sleep(0)
        rig.log.pump("ok")
        if gate.held:
            break
    assert gate.held, "the order's saga waits on group 1"
    saga = next(iter(sagas._tasks))
    reserving.cancel()
    await until_turns(reserving.done, "the caller is gone")
    gate.open()
    await rig.pump_until_done([saga])
    assert saga.result()[0].state == State.HELD and rig.quantities() == [(3, 0), (3, 0)]
    await until_turns(lambda: engine.metrics.reservations_of("held").value == 1, "the hold counted once decided")
