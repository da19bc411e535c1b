"""R5 across processes while a group changes hands under a ReserveStream's batch (``IdGuard.claimed``,
``Engine.reserve_many``): an id whose record's group this process serves is known here, so the batch's
check claims nothing for it — its record decides. Should the group be handed over before the batch
decides, the id is known no longer, and the Reserve is homed by its lines: a retry of the id with
other lines was decided there without a claim, a second record of the id (its first kept in the
group handed over), where it must be refused ``RESERVATION_ID_REUSED`` naming ``lines`` (seen as
``--seed 40049 --processes 2 --late-across-steps --retry-other-content --clock-skew`` of the simulation).

One leased process holding every group, its balancing the test's: the hand-over and the claims' round
trip are held at the point each case needs, so the interleaving is the same every run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.storage.ids import IdClaims
from reservation import AlreadyExists, DomainError, LineRequest, ReserveCommand, State
from tests.atp_service.app.test_lease_lost_mid_renewal import start, stocked_group, taken_anew
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

__all__ = ["start"]  # the fixture, used here
HOME = 1


def _cmd(rid: str, sku: str, qty: int) -> ReserveCommand:
    return ReserveCommand(rid, "", "web", (LineRequest(sku, "DC", qty),), 600_000, False)


async def _retried_elsewhere(start: ServiceFactory) -> tuple[AtpService, Any, Any, Any, str, str]:
    """(service, client, membership, engine, here, there): ``x`` held of 2 ``here`` (in group ``HOME``),
    ``there`` a SKU of another group, 5 units each."""
    service, client, membership, engine, here = await stocked_group(start, HOME, 5)
    there = next(f"t{i}" for i in range(64) if engine.place(f"t{i}") != HOME)
    await client.record_events([receipt("in-2", there, "DC", 5)])
    assert (await client.reserve("x", [(here, "DC", 2)], ttl_seconds=600)).state == pb.RESERVATION_STATE_HELD
    assert engine.routes.homes["x"] == HOME
    return service, client, membership, engine, here, there


async def _one_record(client: Any, membership: Any, engine: Any, here: str, there: str, held_there: int) -> None:
    """``x`` not decided again ``there``; its one record, taken back with its group, still of ``here``."""
    assert "x" not in engine.actors[engine.place(there)].ledger.reservations, "a second record of x"
    (position,) = await client.availability([(there, "DC")])
    assert position.reserved == held_there
    await taken_anew(membership, HOME, f"group {HOME} taken back")
    assert [line.sku for line in (await client.get_reservation("x")).lines] == [here]


def _refused_lines(answer: object) -> None:
    assert isinstance(answer, AlreadyExists) and answer.field == "lines", answer


def claims_held_back(monkeypatch: pytest.MonkeyPatch, claims: IdClaims) -> tuple[asyncio.Event, asyncio.Event]:
    """(sent, go on): a round trip of claims sets the first and waits for the second, as a slow Redis would."""
    sent, go_on = asyncio.Event(), asyncio.Event()
    run = claims._run

    async def held_back(calls: list[Any]) -> list[Any]:
        sent.set()
        await go_on.wait()
        return await run(calls)

    monkeypatch.setattr(claims, "_run", held_back)
    return sent, go_on


async def test_an_id_known_at_the_batch_s_check_whose_group_is_handed_over_while_it_waits_is_claimed_R5(
        start: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch waits for another item's claim; meanwhile ``x``'s group is handed over. ``x``'s retry,
    now homed by its line, must be claimed before it is decided: the claim names ``HOME``."""
    _, client, membership, engine, here, there = await _retried_elsewhere(start)
    sent, go_on = claims_held_back(monkeypatch, engine.ids.claims)
    batch = asyncio.create_task(engine.reserve_many([_cmd("y", there, 1), _cmd("x", there, 3)]))
    await sent.wait()  # y's claim on its way; x known here, its record's group served: nothing claimed for it
    await membership._hand_over(HOME)
    assert "x" not in engine.routes.homes
    go_on.set()
    y, x = await batch
    assert not isinstance(y, DomainError) and y[0].state == State.HELD, y
    _refused_lines(x)
    monkeypatch.undo()
    await _one_record(client, membership, engine, here, there, 1)


async def test_an_id_whose_group_is_handed_over_as_its_order_s_task_starts_is_claimed_first_R5(
        start: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the batch's check ``x`` is known (its record's group ``HOME`` drained for a hand-over, its routes
    not yet dropped): its retry spans its record's group and its line's, so it is decided in a task of its
    own, a turn of the event loop later. The hand-over drops ``x``'s route in that turn (its shard
    stopped, it goes on as the batch's check ends); the task finds ``x`` unknown, homed by its line
    alone, and must claim it before deciding it there."""
    _, client, membership, engine, here, there = await _retried_elsewhere(start)
    actor, stopped, let_go = engine.actors[HOME], asyncio.Event(), asyncio.Event()
    stop, claimed = actor.stop, engine.ids.claimed

    async def stopped_then_held(*args: Any) -> None:
        await stop(*args)
        stopped.set()
        await let_go.wait()

    async def claimed_then_let_go(*args: Any) -> Any:
        items = await claimed(*args)
        let_go.set()  # its waiter woken before the batch's order task first runs (both a turn away)
        return items

    monkeypatch.setattr(actor, "stop", stopped_then_held)
    monkeypatch.setattr(engine.ids, "claimed", claimed_then_let_go)
    handing = asyncio.create_task(membership._hand_over(HOME, snapshot=False))
    await stopped.wait()
    assert engine.actors[HOME].vacant and engine.routes.homes["x"] == HOME
    (x,) = await engine.reserve_many([_cmd("x", there, 3)])
    await handing
    _refused_lines(x)
    monkeypatch.undo()
    await _one_record(client, membership, engine, here, there, 0)
