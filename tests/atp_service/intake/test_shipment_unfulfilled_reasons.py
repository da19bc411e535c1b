"""``atp_shipments_unfulfilled_total`` says why a SHIPMENT naming a reservation moved the stock and fulfilled nothing
(R4), on a real service and a real redis-server: its ``reason`` label, of a closed vocabulary
(``reservation._unfulfilled.Unfulfilled``), tells a late shipment of an earlier holder of the id (nothing to fix) from
a reservation whose units stay reserved or committed beside those gone (to fix by hand)."""

from __future__ import annotations

import logging

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import orders as orders_module
from atp_service.engine.router import Engine
from reservation import Reservation
from reservation._unfulfilled import Unfulfilled
from tests.atp_service.app.leased_pair import LEASED
from tests.atp_service.fact_helpers import F, unfulfilled_told
from tests.atp_service.intake.test_shipment_earlier_holder import T0, reserved_again
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until


def shipment(event_id: str, location: str, quantity: int, reservation_id: str, at: int) -> pb.Fact:
    fact = F(event_id, "SHIPMENT", "A", location, quantity, at, "wms").pb()
    fact.reservation_id = reservation_id
    return fact


def reasons_logged(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The ``reason`` of each ``shipment_not_fulfilled`` line captured, by its fact's ``event_id``."""
    lines = [r for r in caplog.records if getattr(r, "event", "") == "shipment_not_fulfilled"]
    return {r.event_id: r.reason for r in lines}  # type: ignore[attr-defined]


async def test_each_shipment_that_fulfils_nothing_is_counted_by_why_R4(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: every such shipment was counted under its origin alone, whatever the reason: a dashboard could not tell
    an earlier holder's late parcel from a WMS shipping before the OMS confirmed, or a shipment reported twice. Its log
    line says the same ``reason`` (defect: it had none, so a log search could not pick one cause's lines)."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock)
    assert service.engine is not None and service.desk is not None
    service.desk.unfulfilled_lines.interval_s = 0  # every line written: none left out, whatever the timing
    await client.record_events([F("stock", "RECEIPT", "A", "DC", 20, T0 - 1_000, "wms").pb()])
    await reserved_again(client, service.engine.run_maintenance, clock)  # r: its earlier holder forgotten
    now = clock.now_ms()
    await client.reserve("held", [("A", "DC", 1)], ttl_seconds=600)
    for rid in ("shipped", "elsewhere"):
        await client.reserve(rid, [("A", "DC", 1)], ttl_seconds=600)
        await client.confirm(rid)
    facts = [shipment("old-parcel", "DC", 1, "r", T0 + 1),  # stamped while r's earlier holder was live
             shipment("early", "DC", 1, "held", now),  # before the OMS confirmed
             shipment("lost", "DC", 1, "nope", now),  # no such reservation
             shipment("once", "DC", 1, "shipped", now), shipment("twice", "DC", 1, "shipped", now),  # twice reported
             shipment("astray", "S2", 1, "elsewhere", now)]  # a position that is no line of it
    with caplog.at_level(logging.WARNING):
        answers = await client.record_events(facts)
    assert [a.outcome for a in answers] == [pb.FACT_OUTCOME_APPLIED] * len(facts), answers
    assert [bool(a.detail) for a in answers] == [True, True, True, False, True, True], answers
    counted = {cause.value: unfulfilled_told(service, cause.value) for cause in Unfulfilled}
    assert counted == {"earlier_holder": 1, "not_confirmed": 1, "unknown": 1, "resolved": 1, "not_a_line": 1,
                       "earlier_order": 0, "refused": 0}, counted
    assert reasons_logged(caplog) == {"old-parcel": "earlier_holder", "early": "not_confirmed", "lost": "unknown",
                                      "twice": "resolved", "astray": "not_a_line"}


async def test_a_shipment_a_later_count_absorbed_naming_no_known_reservation_is_counted_unknown_R4_E4(
        start_service: ServiceFactory) -> None:
    """Defect: a SHIPMENT ordered before the position's latest count (ABSORBED, E4: the count already holds the units
    gone) naming a reservation unknown here was answered as fulfilled and neither counted nor logged, while one naming a
    HELD reservation was told not fulfilled: a reservation made after it under that id held units that had left."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock)
    await client.record_events([F("stock", "RECEIPT", "A", "DC", 20, T0 - 9_000, "wms").pb(),
                                F("count", "COUNT", "A", "DC", 15, T0 - 1_000, "wms").pb()])
    await client.reserve("held", [("A", "DC", 1)], ttl_seconds=600)
    facts = [shipment("lost", "DC", 1, "nope", T0 - 5_000), shipment("early", "DC", 1, "held", T0 - 5_000)]
    answers = await client.record_events(facts)
    assert [a.outcome for a in answers] == [pb.FACT_OUTCOME_ABSORBED] * 2, answers
    assert all(a.detail.startswith("stock moved; reservation not fulfilled: ") for a in answers), answers
    counted = {cause.value: unfulfilled_told(service, cause.value) for cause in Unfulfilled}
    assert counted == {"unknown": 1, "not_confirmed": 1, "earlier_holder": 0, "resolved": 0, "not_a_line": 0,
                       "earlier_order": 0, "refused": 0}, counted
    assert [p.on_hand for p in await client.availability([("A", "DC")])] == [15]  # the count holds what left (E4)


def three_shards(engine: Engine) -> tuple[str, str, str]:
    """Three SKUs, each on a shard of its own."""
    found: dict[int, str] = {}
    for sku in (f"SKU-{i}" for i in range(1000)):
        found.setdefault(engine.place(sku), sku)
        if len(found) == 3:
            break
    first, second, third = found.values()
    return first, second, third


async def test_a_shipment_of_an_order_forgotten_as_it_waited_is_told_unknown_not_a_line_R4(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SHIPMENT naming an order homed here, at a shard holding no part of it, the order forgotten before the
    shipment's turn came (its record read at its home finds nothing: here made so by a hook, the window being between
    the fact's routing and the order's lock). Defect: told ``not_a_line`` ("check the producer's locations") for a
    reservation that is gone; it is ``unknown``, as where the order was forgotten before the fact arrived."""
    service, client = await start_service(clock=ManualClock(T0), port=held_port(), **{**LEASED, "shards": 4})
    engine = service.engine
    assert engine is not None and service.desk is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "every group taken")
    service.desk.unfulfilled_lines.interval_s = 0
    a, b, c = three_shards(engine)
    await client.record_events([F(f"in-{sku}", "RECEIPT", sku, "DC", 5, T0 - 1_000, "wms").pb() for sku in (a, b, c)])
    await client.reserve("o", [(a, "DC", 1), (b, "DC", 1)], ttl_seconds=60)
    await client.confirm("o")
    home = engine.home_of("o")
    assert home is not None and engine.is_order(home, "o")
    real_record_at = orders_module.record_at

    async def forgotten(engine_: Engine, shard: int, reservation_id: str) -> Reservation | None:
        return None if reservation_id == "o" else await real_record_at(engine_, shard, reservation_id)

    monkeypatch.setattr(orders_module, "record_at", forgotten)
    fact = F("gone", "SHIPMENT", c, "DC", 1, T0, "wms").pb()
    fact.reservation_id = "o"
    with caplog.at_level(logging.WARNING):
        (answer,) = await client.record_events([fact])
    assert answer.outcome == pb.FACT_OUTCOME_APPLIED and "'o' unknown" in answer.detail, answer
    assert [unfulfilled_told(service, reason) for reason in ("unknown", "not_a_line")] == [1, 0]
    assert reasons_logged(caplog) == {"gone": "unknown"}
    (p,) = await client.availability([(c, "DC")])
    assert p.on_hand == 4  # the units left all the same (Q1)
