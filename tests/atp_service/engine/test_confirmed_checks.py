"""``ConfirmedChecks``: a group's confirmed orders checked once after it is taken, a bounded few at a time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from atp_service.engine import confirmed
from atp_service.engine.confirmed import CONFIRMED_CHECKS_AT_ONCE, ConfirmedChecks
from reservation import Ledger, OrderStep, PendingOp, State


def ledger(shard: int, records: dict[str, tuple[bool, State, PendingOp | None]]) -> Ledger:
    """A stand-in with what the sweep reads: the group and its records (is an order, state, pending)."""
    return cast(Ledger, SimpleNamespace(shard=shard, reservations={
        rid: SimpleNamespace(is_order=is_order, state=state, pending=pending)
        for rid, (is_order, state, pending) in records.items()}))


def actor(group: Ledger, vacant: bool = False) -> Any:
    return SimpleNamespace(shard=group.shard, vacant=vacant, ledger=group)


async def test_only_confirmed_orders_with_nothing_pending_are_checked_each_once_a_few_at_a_time() -> None:
    many = {f"o-{n:03d}": (True, State.CONFIRMED, None) for n in range(CONFIRMED_CHECKS_AT_ONCE * 2 + 1)}
    others = {"plain": (False, State.CONFIRMED, None), "held": (True, State.HELD, None),
              "pending": (True, State.CONFIRMED, PendingOp(OrderStep.FULFIL)), "done": (True, State.FULFILLED, None)}
    group = ledger(1, {**others, **many})
    started: list[tuple[str, int]] = []
    gates: list[asyncio.Future[None]] = []

    def check(order_id: str, home: int) -> asyncio.Future[None]:
        started.append((order_id, home))
        gates.append(asyncio.get_running_loop().create_future())
        return gates[-1]

    checks = ConfirmedChecks(check, lambda _order_id: False)
    checks.taken(group)
    actors = [actor(ledger(0, {})), actor(group)]
    checks.run_pass(actors)
    assert started == [(rid, 1) for rid in sorted(many)[:CONFIRMED_CHECKS_AT_ONCE]]
    checks.run_pass(actors)
    assert len(started) == CONFIRMED_CHECKS_AT_ONCE, "none more while as many run"
    for gate in gates:
        gate.set_result(None)
    await asyncio.sleep(0)  # their done callbacks
    while checks.pending:
        checks.run_pass(actors)
        for gate in gates:
            if not gate.done():
                gate.set_result(None)
        await asyncio.sleep(0)
    assert sorted(started) == [(rid, 1) for rid in sorted(many)], "each confirmed order once, nothing else"


async def test_an_order_whose_saga_runs_waits_and_a_group_handed_over_is_swept_no_more(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confirmed, "CONFIRMED_SCAN_PER_PASS", 2)
    group = ledger(0, {"o-1": (True, State.CONFIRMED, None), "o-2": (True, State.CONFIRMED, None),
                       "o-3": (True, State.CONFIRMED, None)})
    started: list[str] = []
    locked = {"o-1"}

    def check(order_id: str, _home: int) -> asyncio.Future[None]:
        started.append(order_id)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    checks = ConfirmedChecks(check, lambda order_id: order_id in locked)
    checks.taken(group)
    checks.run_pass([actor(group)])
    assert started == [] and checks.pending == 3, "o-1's saga resolves it if done: looked at again later"
    locked.clear()
    checks.run_pass([actor(group)])
    assert started == ["o-1", "o-2"], "CONFIRMED_SCAN_PER_PASS records a pass"
    checks.run_pass([actor(group, vacant=True)])
    await asyncio.sleep(0)  # the checks' done callbacks
    assert checks.pending == 0 and started == ["o-1", "o-2"], "handed over: its new owner checks the rest"


async def test_a_check_that_could_not_tell_is_looked_at_again_and_a_group_taken_anew_drops_it() -> None:
    group = ledger(0, {"o-1": (True, State.CONFIRMED, None), "o-2": (True, State.CONFIRMED, None)})
    started: list[str] = []
    told = {"o-1": [False, True], "o-2": [True]}  # o-1: a part's group did not answer the first time

    def check(order_id: str, _home: int) -> asyncio.Future[bool]:
        started.append(order_id)
        done = asyncio.get_running_loop().create_future()
        done.set_result(told[order_id].pop(0))
        return done

    checks = ConfirmedChecks(check, lambda _order_id: False)
    checks.taken(group)
    checks.run_pass([actor(group)])
    await asyncio.sleep(0)  # the checks' done callbacks
    assert started == ["o-1", "o-2"] and checks.pending == 1, "o-1 to be checked again"
    checks.run_pass([actor(group)])
    await asyncio.sleep(0)
    assert started == ["o-1", "o-2", "o-1"] and checks.pending == 0

    told.update({"o-1": [False], "o-2": [True]})
    checks.taken(group)
    checks.run_pass([actor(group)])
    anew = ledger(0, {})
    checks.taken(anew)  # the group handed over and taken again before o-1's check ended
    await asyncio.sleep(0)
    checks.run_pass([actor(anew)])
    assert checks.pending == 0, "swept anew: the new ledger's records only"
