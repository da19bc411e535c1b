"""An order over groups of different service processes (``ownership = leases``) whose saga could not
finish a change at the process owning one of its parts: what meets the part there meanwhile finds
the order's decision carried through first, as on one process (``engine.orders``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge import peers
from atp_service.engine import orders as engine_orders
from atp_service.engine import parts
from reservation import OrderStep, Reason, Unavailable
from reservation import _orders as orders
from tests.atp_service.app.test_lease_lost_mid_renewal import recovery_held_back
from tests.atp_service.app.test_processes import SHARDS, Process, group_of, owned, processes, shipment
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.fact_helpers import unfulfilled_told
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


def home_and_other(running: list[Process]) -> tuple[Process, Process, str, str]:
    """(the process owning the order's home, the other, a SKU of the home group, one of the other's):
    the home is the lowest group of the order's lines."""
    skus = [f"k{i}" for i in range(64)]
    for low in skus:
        for high in skus:
            if group_of(low) < group_of(high):
                home = next(p for p in running if group_of(low) in owned(p[0]))
                other = next(p for p in running if group_of(high) in owned(p[0]))
                if home is not other:
                    return home, other, low, high
    raise AssertionError("no two SKUs in groups of different processes")


async def stocked(running: list[Process]) -> tuple[Process, Process, str, str]:
    """``home_and_other``, with 5 units received of each SKU at DC."""
    (home, home_client), (other, other_client), a, b = home_and_other(running)
    await home_client.record_events([receipt("in-a", a, "DC", 5)])
    await other_client.record_events([receipt("in-b", b, "DC", 5)])
    return (home, home_client), (other, other_client), a, b


async def confirmed_and_shipped_at_home(home_client: AtpClient, a: str, b: str, b_units: int) -> None:
    """Order o-1 of 2 ``a`` and ``b_units`` ``b`` held and confirmed, and its home's part fulfilled by a SHIPMENT
    of 2 ``a`` (APPLIED): what is left is the other process's part."""
    assert (await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", b_units)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    await home_client.confirm("o-1")
    shipped = await home_client.record_events([shipment("out-a", a, 2, "o-1")])
    assert [r.outcome for r in shipped] == [pb.FACT_OUTCOME_APPLIED], shipped


def steps_not_reaching(monkeypatch: pytest.MonkeyPatch, matches: Callable[[parts.PartStep], bool]) -> list[bool]:
    """While the returned flag is set, each part step that ``matches`` is refused as by a shard whose log does not
    answer (nothing applied), wherever it runs."""
    flag = [True]
    work_of = parts.work_of

    def refusing(engine: Any, step: parts.PartStep) -> Any:
        if flag[0] and matches(step):
            def refuse(_ledger: Any, _now: int) -> Any:
                raise Unavailable("log storage unreachable, retry later")
            return refuse
        return work_of(engine, step)

    monkeypatch.setattr(parts, "work_of", refusing)
    return flag


def confirmation_not_reaching(monkeypatch: pytest.MonkeyPatch, part_id: str,
                               kind: OrderStep = OrderStep.CONFIRM) -> list[bool]:
    """While the returned flag is set, the step confirming ``part_id`` (applying its share of a change
    of ``kind``) is refused as by a shard whose log does not answer (nothing applied), wherever it runs."""
    return steps_not_reaching(monkeypatch, lambda step: isinstance(step, parts.ApplyShare) and step.part == part_id
                              and step.share.kind == kind)


def resolves_unanswered(monkeypatch: pytest.MonkeyPatch, service: AtpService) -> list[bool]:
    """While the returned flag is set, ``service``'s step asking another process to resolve an order
    is not answered (the peer cut off, or its group changing hands), as ``edge.peers.step_sender`` says."""
    assert service.engine is not None and service.engine.remote is not None
    send, cut = service.engine.remote, [True]

    async def resolve_unanswered(address: str, request: bytes) -> bytes:
        if cut[0] and isinstance(parts._requests.decode(request).step, parts.ResolveOrder):
            raise Unavailable(f"peer {address} did not answer an order step (DEADLINE_EXCEEDED)",
                              Reason.OUTCOME_UNKNOWN)
        return await send(address, request)

    monkeypatch.setattr(service.engine, "remote", resolve_unanswered)
    return cut


async def confirmed_at_home_only(start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch
                                 ) -> tuple[Process, Process, str, str]:
    """Two processes; order o-1 over a SKU of each (``home_and_other``), held, then confirmed at its home
    only: the step confirming the other's part refused, the caller told UNAVAILABLE, housekeeping kept
    from carrying it through (``monkeypatch.undo()`` lets it)."""
    running = await processes(start_process, 2)
    (home, home_client), (other, other_client), a, b = await stocked(running)
    held = await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
    assert held.state == pb.RESERVATION_STATE_HELD
    assert home.engine is not None and home.engine.orders is not None
    monkeypatch.setattr(home.engine.orders, "drive_unsettled", lambda: None)  # not carried through by housekeeping
    flag = confirmation_not_reaching(monkeypatch, orders.part_id("o-1", group_of(b)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await home_client.confirm("o-1")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    flag[0] = False
    return (home, home_client), (other, other_client), a, b


async def test_a_shipment_at_a_part_s_process_carries_its_order_s_pending_confirmation_through_first(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Confirm recorded at the order's home and not yet applied by the part at another process
    (the step refused there; the caller told UNAVAILABLE): a SHIPMENT fact naming the order, taken by
    that part's process, finishes the confirmation first and then fulfils the part — never "not
    fulfilled" with the part's units committed after the shipment took them from on_hand, where no
    release of a confirmed order's shipped units would ever come (Q3, R4)."""
    (home, home_client), (_, other_client), _, b = await confirmed_at_home_only(start_process, monkeypatch)
    shipped = await other_client.record_events([shipment("out-b", b, 1, "o-1")])
    assert [r.outcome for r in shipped] == [pb.FACT_OUTCOME_APPLIED], shipped
    (p,) = await other_client.availability([(b, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (4, 0, 0), "the shipped unit is neither held nor committed"

    monkeypatch.undo()  # housekeeping again: nothing is left for it to change
    await until(lambda: not home.engine.orders.unsettled, "the order settled")  # type: ignore[union-attr]
    (p,) = await other_client.availability([(b, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (4, 0, 0)
    assert (await home_client.get_reservation("o-1")).state == pb.RESERVATION_STATE_CONFIRMED


async def test_a_shipment_meeting_its_order_s_home_group_while_it_changes_hands_is_taken_again_later(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order's home group handed over and taken again, its recovery not done yet: the process the
    routes name for it holds no record of the order yet, and says so. The shipment is refused (taken
    again later) — "no process holds the order" needs every group answered for, as a read's NOT_FOUND
    does — never applied without the pending confirmation carried through first (Q3, R4)."""
    (home, _), (other, other_client), a, b = await confirmed_at_home_only(start_process, monkeypatch)
    assert home.membership is not None and other.membership is not None

    group, address = group_of(a), f"127.0.0.1:{home.port}"
    taking, recovered = recovery_held_back(monkeypatch, group)
    await home.membership._hand_over(group)  # as balancing does
    await taking.wait()
    assert group in home.membership.leases.held, "taken again by the order's home process"
    routes = other.membership
    await until(lambda: routes.where(group)[0] == address, "the part's process routing the group there")
    with pytest.raises(grpc.aio.AioRpcError) as later:
        await other_client.record_events([shipment("out-b", b, 1, "o-1")])
    assert later.value.code() == grpc.StatusCode.UNAVAILABLE

    recovered.set()
    await until(lambda: group in owned(home), "the home group recovered")
    shipped = await other_client.record_events([shipment("out-b", b, 1, "o-1")])
    assert [(r.outcome, r.detail) for r in shipped] == [(pb.FACT_OUTCOME_APPLIED, "")], shipped
    monkeypatch.undo()
    await until(lambda: not home.engine.orders.unsettled, "the order settled")  # type: ignore[union-attr]
    (p,) = await other_client.availability([(b, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (4, 0, 0), "the shipped unit is neither held nor committed"


async def test_a_peer_that_does_not_answer_an_order_step_is_said_naming_it_the_step_and_the_error(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The process owning a part of an order does not answer its step (paused, cut off): the order stays
    pending and housekeeping sends the step again every pass (``atp_orders_unsettled``, ATPOrdersUnsettled),
    and nothing at WARNING or above said which peer, which step, why. Now a WARNING does, at most once a
    minute per peer."""
    running = await processes(start_process, 2)
    (_, home_client), (other, _), a, b = await stocked(running)
    answer, asked = asyncio.Event(), [0]
    serve_part = peers.serve_part

    async def not_answering(engine: Any, request: bytes) -> bytes:  # the peer's steps wait past their deadline
        asked[0] += 1
        await answer.wait()
        return await serve_part(engine, request)

    monkeypatch.setattr(peers, "serve_part", not_answering)
    monkeypatch.setattr(peers, "STEP_TIMEOUT_S", 0.5)
    try:
        with caplog.at_level(logging.INFO, logger="atp_service.edge.peers"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await until(lambda: asked[0] >= 3, "housekeeping sending the order's step again")  # said once
    finally:
        answer.set()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "atp_service.edge.peers"]
    assert [(getattr(r, "event", None), getattr(r, "peer", None), getattr(r, "step", None), getattr(r, "code", None))
            for r in said] == [("peer_step_failed", f"127.0.0.1:{other.port}", "reserve", "DEADLINE_EXCEEDED")]
    assert getattr(said[0], "reservation_id", None) == orders.part_id("o-1", group_of(b)), said[0].__dict__
    assert getattr(said[0], "group", None) == group_of(b)


async def test_a_shipment_whose_order_s_home_did_not_hear_of_it_is_taken_again_until_the_order_is_resolved(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last part of a confirmed order fulfilled by a SHIPMENT fact at the part's process, the step
    asking the order's home to resolve its record not answered (the home cut off for a moment, or its
    group changing hands): the fact was answered APPLIED and the record stayed CONFIRMED at its home for
    good — a confirmed order never expires, and no read or change resolves it — counted live there
    (``max_live_reservations_per_shard``) and never forgotten (R5). Now the fact is refused
    OUTCOME_UNKNOWN (it was applied) until the home has heard: taken again, it resolves the order."""
    running = await processes(start_process, 2)
    (home, home_client), (other, other_client), a, b = await stocked(running)
    await confirmed_and_shipped_at_home(home_client, a, b, b_units=1)
    assert home.engine is not None
    cut = resolves_unanswered(monkeypatch, other)
    refusals = 0
    while True:  # a caller retrying the fact on UNAVAILABLE, as it is told to
        try:
            shipped = await other_client.record_events([shipment("out-b", b, 1, "o-1")])
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            refusals += 1
            cut[0] = False
    assert refusals == 1, "refused while its home had not heard of it"
    assert shipped[0].outcome in (pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE), shipped
    home_group = home.engine.home_of("o-1")
    assert home_group is not None
    record = home.engine.actors[home_group].ledger.reservation("o-1")
    assert record is not None and record.state.name == "FULFILLED", (refusals, record)
    (p,) = await other_client.availability([(b, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (4, 0, 0), "shipped once"


async def test_a_shipment_that_fulfils_nothing_is_told_whether_or_not_the_order_s_home_answers(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SHIPMENT naming an order's part held but not confirmed moves stock and fulfils nothing: it is
    answered with why and counted (``atp_shipments_unfulfilled_total``). Refused while the order's home
    did not answer the resolve step, it came back a duplicate, and was never told (R4: units gone from
    on_hand still counted reserved, and nothing said so). It resolves nothing: its home is asked, not waited for."""
    running = await processes(start_process, 2)
    (_, home_client), (other, other_client), a, b = await stocked(running)
    assert (await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    resolves_unanswered(monkeypatch, other)
    (shipped,) = await other_client.record_events([shipment("out-b", b, 1, "o-1")])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED, shipped
    assert unfulfilled_told(other, "not_confirmed") == 1


async def test_a_shipment_fulfilling_the_last_part_while_a_change_is_pending_at_home_resolves_the_order(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial Fulfil of a confirmed order recorded at its home between a shipment's settle step and
    its resolve step, its share not applied (the part's process did not answer it): the home answered
    the resolve step with the record, not resolving an order with a change pending, and housekeeping
    then carried the change through and only settled it — the record CONFIRMED for good though every
    part was fulfilled, counted live and never forgotten (R5). The resolve step now carries the change
    through first and resolves the order."""
    running = await processes(start_process, 2)
    (home, home_client), (_, other_client), a, b = await stocked(running)
    await confirmed_and_shipped_at_home(home_client, a, b, b_units=2)
    assert home.engine is not None and home.engine.orders is not None
    monkeypatch.setattr(home.engine.orders, "drive_unsettled", lambda: None)  # not carried through by housekeeping
    flag = confirmation_not_reaching(monkeypatch, orders.part_id("o-1", group_of(b)), OrderStep.FULFIL)
    shipped_elsewhere = engine_orders.shipped_elsewhere

    async def fulfilled_at_home_meanwhile(engine: Any, fact: Any, ship: Any, *held: Any) -> Any:
        async def ship_after_a_change(order: Any) -> Any:  # settled at its home already
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await home_client.fulfill("o-1", [(b, "DC", 1)], operation_id="op-1")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            flag[0] = False
            return await ship(order)

        return await shipped_elsewhere(engine, fact, ship_after_a_change, *held)

    monkeypatch.setattr(engine_orders, "shipped_elsewhere", fulfilled_at_home_meanwhile)
    shipped = await other_client.record_events([shipment("out-b", b, 2, "o-1")])
    assert [(r.outcome, r.detail) for r in shipped] == [(pb.FACT_OUTCOME_APPLIED, "")], shipped
    monkeypatch.undo()  # housekeeping again
    await until(lambda: not home.engine.orders.unsettled, "the order settled")  # type: ignore[union-attr]
    home_group = home.engine.home_of("o-1")
    assert home_group is not None
    record = home.engine.actors[home_group].ledger.reservation("o-1")
    assert record is not None and record.state.name == "FULFILLED" and record.pending is None, record
    (p,) = await other_client.availability([(b, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (3, 0, 0), "shipped once, nothing left committed"
