"""Calls that may need several processes' groups, split by owner: a ``ReserveStream`` sent to one
process has each item decided by the owner of its group, over one outbound stream per owner, and
a ``GetAvailability`` answers keys of every process — or, for a caller routing by itself, the
foreign part is refused ``GROUP_MOVED`` with nothing of it applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from atp_client import Refusal, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.app.test_processes import (
    Process,
    balanced,
    members_read,
    owner_of,
    processes,
    routed,
    skus_in_other_groups,
    start_process,
)
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name
REDIRECT = (("atp-routing", "redirect"),)


async def stocked_pair(start: ServiceFactory) -> tuple[list[Process], str, str]:
    """Two processes, and a SKU of a group each owns (``here`` of the first's), 10 units of each."""
    running = await processes(start, 2)
    a, b = skus_in_other_groups(running)
    here, there = (a, b) if owner_of(running, a) is running[0] else (b, a)
    await running[0][1].record_events([receipt("in-here", here, "DC", 10), receipt("in-there", there, "DC", 10)])
    return running, here, there


def item(rid: str, sku: str, qty: int) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, location="DC", quantity=qty)])


async def reserved(running: list[Process], sku: str) -> int:
    (position,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
    return position.reserved


def forwarded(service: AtpService, method: str, outcome: str) -> float:
    value = service.metrics.registry.get_sample_value("atp_forwarded_calls_total",
                                                      {"method": method, "outcome": outcome})
    return value or 0.0


def split_tasks() -> list[str]:
    """The tasks of the split stream still running: outbound readers, batches being decided."""
    names = ("OwnerStream._read", "AvailabilityServicer._reserve_batch")
    return [name for task in asyncio.all_tasks() if (name := task.get_coro().__qualname__) in names]


async def test_a_stream_s_items_are_each_decided_by_their_group_s_owner_in_order(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (service, client), (owner, _) = running
    batches = [[item("s-1", here, 2), item("s-2", there, 3), item("s-3", there, 1)],
               [item("s-4", there, 7), item("s-5", here, 1)],  # s-4: only 6 left there, refused by the owner
               [item("s-6", there, 6), item("s-7", here, 1), item("s-8", there, 1)]]
    answers = [list(answer.outcomes) async for answer in client.reserve_stream(batches)]
    assert [[o.reservation_id for o in answer] for answer in answers] == \
        [[r.reservation_id for r in batch] for batch in batches]
    states = [o.response.state for answer in answers for o in answer]
    assert all(not o.HasField("error") for answer in answers for o in answer), answers
    assert states == [pb.RESERVATION_STATE_HELD] * 3 + [pb.RESERVATION_STATE_REJECTED] + \
        [pb.RESERVATION_STATE_HELD] * 3 + [pb.RESERVATION_STATE_REJECTED]
    assert (await reserved(running, here), await reserved(running, there)) == (4, 10)
    assert owner.engine is not None and service.engine is not None
    assert owner.engine.home_of("s-2") is not None and service.engine.home_of("s-2") is None, "decided there"
    assert forwarded(service, "ReserveStream", "ok") == 3  # one part per batch, all on one outbound stream
    await until(lambda: not service._servicer.forwarder.streams, "the outbound stream closed")


async def test_a_stream_routing_by_itself_has_the_foreign_items_refused_and_not_applied(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (service, client), _ = running

    async def requests() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=[item("r-1", there, 2), item("r-2", here, 2)])

    (answer,) = [a async for a in client.stub.ReserveStream(requests(), metadata=REDIRECT)]
    refused, held = answer.outcomes
    assert held.response.state == pb.RESERVATION_STATE_HELD
    refusal = Refusal.from_status(refused.error)
    assert (refused.reservation_id, refusal.code, refusal.reason) == ("r-1", grpc.StatusCode.UNAVAILABLE,
                                                                      "GROUP_MOVED")
    assert refusal.metadata["owner"] == f"127.0.0.1:{running[1][0].port}"
    assert (await reserved(running, there), await reserved(running, here)) == (0, 2)
    assert not service._servicer.forwarder.streams and forwarded(service, "ReserveStream", "redirected") == 1


async def test_a_batch_of_no_reservations_is_refused_by_a_forwarding_process_as_by_the_owner(
        start_process: ServiceFactory) -> None:
    """A batch of no reservations sent to a process that forwards the stream's items ends the stream ``INVALID_FIELD``
    naming ``reservations``, as at the owner, once the batch before it is answered; nothing of it is sent on (the
    owner is sent one part, the first batch's)."""
    running, _, there = await stocked_pair(start_process)
    (service, client), _ = running

    async def requests() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=[item("e-1", there, 1)])
        yield pb.ReserveStreamRequest()

    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for answer in client.stub.ReserveStream(requests()):
            answers.append(answer)
    said = typed(err.value).refusal
    assert (said.code, said.reason, [v.field for v in said.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["reservations"]), said
    assert [[o.response.state for o in a.outcomes] for a in answers] == [[pb.RESERVATION_STATE_HELD]]
    assert await reserved(running, there) == 1
    assert forwarded(service, "ReserveStream", "ok") == 1
    await until(lambda: not service._servicer.forwarder.streams, "the outbound stream closed")


async def test_a_caller_cancelling_its_stream_leaves_no_outbound_stream_nor_task(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (service, client), _ = running
    second = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=[item("c-1", there, 1), item("c-2", here, 1)])
        await second.wait()
        for n in range(4):
            yield pb.ReserveStreamRequest(reservations=[item(f"c-{n}-x", there, 1), item(f"c-{n}-y", here, 1)])
        await asyncio.Event().wait()  # the caller's stream stays open until it cancels

    call = client.stub.ReserveStream(requests())
    first = await call.read()
    assert [o.response.state for o in first.outcomes] == [pb.RESERVATION_STATE_HELD] * 2
    assert len(service._servicer.forwarder.streams) == 1, "one outbound stream open to the other process"
    second.set()
    owner = running[1][0].engine
    assert owner is not None
    await until(lambda: owner.home_of("c-0-x") is not None, "a second batch's part reached its owner")
    call.cancel()  # mid-way: later batches may be in flight at either process
    await until(lambda: not service._servicer.forwarder.streams and not split_tasks(),
                "no outbound stream open, no batch being decided", 30)
    for sku in (here, there):  # whatever was decided is held once; the ids answer it on a retry
        assert 1 <= await reserved(running, sku) <= 5


async def test_availability_over_keys_of_both_processes_is_answered_by_one_in_key_order(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (service, client), (_, at_owner) = running
    await at_owner.reserve("held-there", [(there, "DC", 3)])
    keys = [(there, "DC"), (here, "DC"), (there, "elsewhere"), (here, "nowhere")]
    positions = await client.availability(keys)
    assert [(p.sku, p.location) for p in positions] == keys
    assert [(p.on_hand, p.reserved, p.available) for p in positions] == [(10, 3, 7), (10, 0, 10), (0, 0, 0),
                                                                         (0, 0, 0)]
    assert forwarded(service, "GetAvailability", "ok") == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a caller routing by itself is redirected
        await client.stub.GetAvailability(pb.GetAvailabilityRequest(keys=[
            pb.PositionKey(sku=sku, location=loc) for sku, loc in keys]), metadata=REDIRECT)
    trailers = dict(refused.value.trailing_metadata() or ())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert str(trailers["atp-moved"]).endswith(f" 127.0.0.1:{running[1][0].port}")


def counts_block(skus: list[str], on_hand: list[int], at: int) -> pb.LoadCountsRequest:
    """A LoadCounts block of one row per SKU at "DC", all as of ``at``."""
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["DC"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.array(on_hand, dtype="<i8").tobytes(),
                                as_of=np.full(n, at, dtype="<i8").tobytes())


async def test_a_load_of_counts_over_groups_of_both_processes_is_loaded_whole_from_either(
        start_process: ServiceFactory) -> None:
    """Defect: LoadCounts was not split by owner. A block with rows of both processes' groups was
    applied where it arrived and refused GROUP_MOVED for the rest; sent to the other process it was
    refused the same way for the first one's rows: a nightly ERP load over several processes could
    never be answered OK, whichever process it went to, and ``atpctl stock load`` retried for ever."""
    running, here, there = await stocked_pair(start_process)
    (service, client), (_, other) = running
    at = service.clock.now_ms()
    # A row with a bad on_hand between them: each row keeps its own index in the answer.
    answer = await client.load_counts(counts_block([there, "bad-row", here], [7, -1, 4], at))
    assert (answer.applied, answer.invalid) == (2, 1)
    assert [list(r.rows) for r in answer.rejected] == [[1]]
    assert [(p.on_hand, p.available) for p in await client.availability([(here, "DC"), (there, "DC")])] == \
        [(4, 4), (7, 7)]
    assert forwarded(service, "LoadCounts", "ok") == 1
    again = await other.load_counts(counts_block([here, there], [4, 7], at))  # the same rows at the other
    assert (again.applied, again.duplicate) == (0, 2)
    late = await other.load_counts(counts_block([here, there], [1, 2], at - 50 * 3_600_000))  # E6: too late
    assert late.quarantined == 2 and sorted(r for g in late.rejected for r in g.rows) == [0, 1]
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a caller routing by itself: redirected, nothing loaded
        await client.stub.LoadCounts(counts_block([here, there], [9, 9], at + 1), metadata=REDIRECT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [p.on_hand for p in await client.availability([(here, "DC"), (there, "DC")])] == [4, 7]


async def test_facts_from_a_caller_routing_by_itself_are_redirected_before_any_is_applied(
        start_process: ServiceFactory) -> None:
    """API.md: a call redirected applies nothing of itself. RecordEvents applied the facts of its
    own groups first, then answered GROUP_MOVED for the others: a caller following the redirect
    sent everything to the owner and had half of it applied twice over (harmless by E8, but the
    answer said nothing was done)."""
    running, here, there = await stocked_pair(start_process)
    (_, client), _ = running
    facts = [receipt("redirected-here", here, "DC", 5), receipt("redirected-there", there, "DC", 5)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.RecordEvents(pb.RecordEventsRequest(events=facts), metadata=REDIRECT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [p.on_hand for p in await client.availability([(here, "DC"), (there, "DC")])] == [10, 10]


async def test_items_whose_owner_refuses_the_stream_at_its_start_are_told_its_refusal_not_in_doubt(
        start_process: ServiceFactory) -> None:
    """The owner refusing the outbound stream at its start (its ``max_reserve_streams`` reached here;
    a stop under way, in a rolling restart) decided nothing of it. Its items were answered
    ``OUTCOME_UNKNOWN`` all the same, in doubt, the outbound stream's first part written before the
    owner had accepted it; they are told the owner's refusal now."""
    running = [await start_process(port=held_port(), host="127.0.0.1", max_reserve_streams=1) for _ in range(2)]
    await members_read(running)
    await until(lambda: balanced(running) and routed(running), "the groups spread over the 2 processes", 60)
    a, b = skus_in_other_groups(running)
    here, there = (a, b) if owner_of(running, a) is running[0] else (b, a)
    await running[0][1].record_events([receipt("in-here", here, "DC", 10), receipt("in-there", there, "DC", 10)])
    (_, client), (_, owner_client) = running
    held = owner_client.stub.ReserveStream()  # the owner's one place, taken
    await held.write(pb.ReserveStreamRequest(reservations=[item("o-1", there, 1)]))
    assert len((await held.read()).outcomes) == 1
    answers = [list(answer.outcomes) async for answer in client.reserve_stream([[item("f-1", there, 2),
                                                                                 item("f-2", here, 1)]])]
    (forwarded_item, local_item), = answers
    assert local_item.response.state == pb.RESERVATION_STATE_HELD
    refusal = Refusal.from_status(forwarded_item.error)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED"), refusal
    assert await reserved(running, there) == 1  # only the owner's own stream's
    await held.done_writing()
