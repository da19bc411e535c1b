"""``atp_reservations_total`` of a ``ReserveStream`` whose items fall in groups of several processes
(``ownership = leases``, real Redis, two service processes): each item is counted once, with the outcome its
group's owner decided, by that owner. The process the stream was sent to sends the other's items on (counted in
``atp_forwarded_calls_total``); it decides nothing of them."""

from __future__ import annotations

import grpc
import pytest

from atp_client import Refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.app.test_processes import start_process
from tests.atp_service.app.test_processes_split import item, stocked_pair
from tests.conftest import ServiceFactory

__all__ = ["start_process"]  # the fixture, used here by name


def counted(service: AtpService) -> dict[str, float]:
    """``atp_reservations_total`` by outcome, those above 0."""
    return {sample.labels["outcome"]: sample.value for family in service.metrics.registry.collect()
            if family.name == "atp_reservations" for sample in family.samples
            if sample.name == "atp_reservations_total" and sample.value}


async def test_a_stream_s_items_of_another_process_s_group_are_counted_by_their_owner_alone(
        start_process: ServiceFactory) -> None:
    """Before, the items of the other's group were counted ``error`` where the stream was sent (its shard there
    said ``GROUP_MOVED``, and the batch's count took that for their outcome) as well as held by their owner: each
    one counted twice, once as an error no caller ever saw."""
    running, here, there = await stocked_pair(start_process)
    (service, client), (owner, _) = running
    before = counted(service), counted(owner)
    batch = [item("c-1", here, 1), item("c-2", there, 1), item("c-3", there, 20)]  # c-3: 10 there, rejected
    (answer,) = [answer async for answer in client.reserve_stream([batch])]
    assert [o.response.state for o in answer.outcomes] == [pb.RESERVATION_STATE_HELD] * 2 + \
        [pb.RESERVATION_STATE_REJECTED], answer
    added = [{outcome: n - was.get(outcome, 0) for outcome, n in counted(process).items() if n != was.get(outcome, 0)}
             for process, was in zip((service, owner), before, strict=True)]
    assert added == [{"held": 1}, {"held": 1, "rejected": 1}], added


async def test_a_retried_change_of_an_order_spanning_groups_is_counted_replayed(start_process: ServiceFactory) -> None:
    """An order whose lines fall in both processes' groups is changed by its saga: a Confirm or Release retried
    (the same ids, answered from the record: R5) is counted ``replayed`` by the process that answered it, not
    ``confirmed`` or ``released`` a second time."""
    running, here, there = await stocked_pair(start_process)
    (service, client), (owner, _) = running
    await client.reserve("o-1", [(here, "DC", 1), (there, "DC", 1)])
    before = counted(service), counted(owner)
    for _ in range(2):
        assert (await client.confirm("o-1")).state == pb.RESERVATION_STATE_CONFIRMED
    for _ in range(2):
        assert (await client.release("o-1")).state == pb.RESERVATION_STATE_RELEASED
    added: dict[str, float] = {}
    for process, was in zip((service, owner), before, strict=True):
        for outcome, n in counted(process).items():
            if n != was.get(outcome, 0):
                added[outcome] = added.get(outcome, 0) + n - was.get(outcome, 0)
    assert added == {"confirmed": 1, "released": 1, "replayed": 2}, added


async def test_an_id_refused_at_its_claim_is_counted_error_by_the_process_that_refused_it(
        start_process: ServiceFactory) -> None:
    """A Reserve whose id the keyspace's claim names for another group (its record has other lines) is refused
    ``RESERVATION_ID_REUSED`` by the claim, before anything is decided. Before, that refusal was counted nowhere,
    unary or a stream's item: only refusals found by a shard were counted ``error``."""
    running, here, there = await stocked_pair(start_process)
    (service, client), (owner, owner_client) = running
    await client.reserve("c-9", [(here, "DC", 1)])
    before = counted(service), counted(owner)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # sent to the owner of ``there``: its claim refuses it
        await owner_client.reserve("c-9", [(there, "DC", 1)])
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    (answer,) = [answer async for answer in owner_client.reserve_stream([[item("c-9", there, 1)]])]
    assert Refusal.from_status(answer.outcomes[0].error).reason == "RESERVATION_ID_REUSED", answer
    added = [{outcome: n - was.get(outcome, 0) for outcome, n in counted(process).items() if n != was.get(outcome, 0)}
             for process, was in zip((service, owner), before, strict=True)]
    assert added == [{}, {"error": 2}], added
