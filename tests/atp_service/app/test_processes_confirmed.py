"""An order over groups of different service processes (``ownership = leases``), all shipped at a part's
process while its home never heard: the process taking the home's group over resolves it
(``engine/confirmed.py``), and leaves an order not all shipped as it is."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.engine import parts
from reservation import State, Unavailable
from reservation import _orders as orders
from tests.atp_service.app.test_processes import Process, group_of, owned, processes, shipment
from tests.atp_service.app.test_processes_order_steps import resolves_unanswered, start_process, stocked
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here


def state_at_home(running: list[Process], order_id: str) -> State | None:
    """The order's record at the process whose group holds it now (None: none holds it)."""
    for service, _ in running:
        assert service.engine is not None
        home = service.engine.home_of(order_id)
        if home is not None:
            record = service.engine.actors[home].ledger.reservation(order_id)
            return None if record is None else record.state
    return None


def checks_done(service: AtpService) -> bool:
    assert service.engine is not None and service.engine.orders is not None
    return service.engine.orders.confirmed.pending == 0


async def test_an_order_all_shipped_whose_home_never_heard_is_resolved_by_the_process_taking_its_home_group(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last part of confirmed order o-1 fulfilled by a SHIPMENT at the part's process, the step asking
    the order's home to resolve it not answered, and the fact's producer giving up on the refusal
    (OUTCOME_UNKNOWN): the record stayed CONFIRMED at its home — counted live there, never forgotten (R5),
    even after the group changed hands, as a process knows only the groups it serves. Now the process
    taking the group checks its confirmed orders, reading their parts where they are: o-1 is resolved
    FULFILLED; o-2, confirmed and not shipped, stays CONFIRMED."""
    running = await processes(start_process, 3)
    (home, home_client), (other, other_client), a, b = await stocked(running)
    for order_id, units in (("o-1", 2), ("o-2", 1)):
        assert (await home_client.reserve(order_id, [(a, "DC", units), (b, "DC", 1)], ttl_seconds=600)).state == \
            pb.RESERVATION_STATE_HELD
        await home_client.confirm(order_id)
    shipped = await home_client.record_events([shipment("out-a", a, 2, "o-1")])
    assert [r.outcome for r in shipped] == [pb.FACT_OUTCOME_APPLIED], shipped
    cut = resolves_unanswered(monkeypatch, other)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # its producer gives up on it
        await other_client.record_events([shipment("out-b", b, 1, "o-1")])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    cut[0] = False
    assert state_at_home(running, "o-1") == State.CONFIRMED, "its home did not hear of the last shipment"

    home_group = group_of(a)
    await home.stop(grace_s=0.1)
    running = [p for p in running if p[0] is not home]
    await until(lambda: any(home_group in owned(service) for service, _ in running),
                "the home's group taken over", 60)
    await until(lambda: state_at_home(running, "o-1") == State.FULFILLED,
                "o-1 resolved where its home group went", 60)
    await until(lambda: all(checks_done(service) for service, _ in running), "every check ended", 60)
    assert state_at_home(running, "o-2") == State.CONFIRMED, "an order not all shipped stays confirmed"
    assert (await other_client.get_reservation("o-1")).state == pb.RESERVATION_STATE_FULFILLED
    (position,) = await other_client.availability([(b, "DC")])
    assert (position.on_hand, position.reserved, position.committed) == (4, 0, 1), "o-2's unit still committed"
    for service, _ in running:
        assert service.metrics.registry.get_sample_value("atp_orders_unsettled") == 0


async def test_a_check_whose_part_does_not_answer_is_tried_again_and_not_counted_as_an_order_half_way(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirmed order o-2, nothing pending, whose home group is taken over while its other part's group
    cannot be read (its log not answering): the check cannot tell and is tried again later. The order is
    not half-way: ``atp_orders_unsettled`` (the alert "Orders waiting half-way", orders holding units
    whose saga stopped) stays 0, no saga counted ``stopped``; once the part answers, the check ends and
    o-2 stays CONFIRMED."""
    running = await processes(start_process, 2)
    (home, home_client), (other, _), a, b = await stocked(running)
    assert (await home_client.reserve("o-2", [(a, "DC", 1), (b, "DC", 1)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    await home_client.confirm("o-2")
    part, refused, work_of = orders.part_id("o-2", group_of(b)), [0], parts.work_of

    def read_refused(engine: Any, step: parts.PartStep) -> Any:
        if refused[0] >= 0 and isinstance(step, parts.ReadPart) and step.part == part:
            refused[0] += 1

            def refuse(_ledger: Any, _now: int) -> Any:
                raise Unavailable("log storage unreachable, retry later")
            return refuse
        return work_of(engine, step)

    monkeypatch.setattr(parts, "work_of", read_refused)
    stopped = other.metrics.registry.get_sample_value("atp_order_sagas_total", {"outcome": "stopped"}) or 0
    await home.stop(grace_s=0.1)
    await until(lambda: group_of(a) in owned(other), "the home's group taken over", 60)
    await until(lambda: refused[0] >= 2, "o-2's check tried, and tried again", 60)
    assert other.metrics.registry.get_sample_value("atp_orders_unsettled") == 0, "o-2 is not half-way"
    assert (other.metrics.registry.get_sample_value("atp_order_sagas_total", {"outcome": "stopped"}) or 0) == stopped
    refused[0] = -1  # the part answers again
    await until(lambda: checks_done(other), "o-2's check ended", 60)
    assert state_at_home([(other, _)], "o-2") == State.CONFIRMED
    assert other.metrics.registry.get_sample_value("atp_orders_unsettled") == 0
