"""ExplainAvailability of a busy position, against the real gRPC server and Redis: its answer is
bounded by ``max_message_bytes`` like every other answer the service sends."""

from __future__ import annotations

import asyncio

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

SMALLEST = 64 << 10
"""The lowest ``max_message_bytes`` accepted: what a busy position's answer outgrew first."""
LONG = "x" * 100


async def test_a_position_with_more_deltas_than_an_answer_holds_is_explained_by_its_newest(
        start_service: ServiceFactory) -> None:
    """A day's deltas after the latest count (``fact_grace_ms``) at a busy position outgrew the answer:
    gRPC failed it RESOURCE_EXHAUSTED with no reason and an ERROR in the log, every time."""
    _service, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    sources = [f"pos-{n:04d}-{LONG}" for n in range(1000)]
    for start in range(0, len(sources), 200):
        facts = []
        for n in range(start, start + 200):
            fact = receipt(f"e{n}", "A", "S1", 1, t=T0 - 5000 + n)
            fact.source = sources[n]
            facts.append(fact)
        assert {r.outcome for r in await client.record_events(facts)} == {pb.FACT_OUTCOME_APPLIED}

    explained = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku="A", location="S1"),
                                                      timeout=10)
    assert explained.ByteSize() <= SMALLEST
    assert explained.availability.on_hand == 1000  # the numbers are whole; only the list is cut
    assert explained.deltas_truncated
    listed = [d.source for d in explained.deltas_after_count]
    assert 0 < len(listed) < len(sources)
    assert listed == sources[-len(listed):]  # the newest, in their order (E1)
    assert not explained.holds_truncated


async def test_a_position_with_more_holds_than_an_answer_holds_lists_those_that_fit(
        start_service: ServiceFactory) -> None:
    """``max_explain_holds`` reservations with ids of ``max_id_length`` outgrow a small ``max_message_bytes``."""
    _service, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    await client.record_events([receipt("stock", "B", "S1", 1000)])

    def reserve(n: int) -> pb.ReserveRequest:
        return pb.ReserveRequest(reservation_id=f"r{n:04d}-{LONG}", order_ref=f"o{n:04d}-{LONG}",
                                 channel=f"c-{LONG}", lines=[pb.Line(sku="B", location="S1", quantity=1)])

    for start in range(0, 300, 100):
        await asyncio.gather(*(client.stub.Reserve(reserve(n), timeout=10) for n in range(start, start + 100)))

    explained = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku="B", location="S1"),
                                                      timeout=10)
    assert explained.ByteSize() <= SMALLEST
    assert explained.availability.reserved == 300
    assert explained.holds_truncated
    assert 0 < len(explained.holds) < 300
    assert all(hold.held == 1 for hold in explained.holds)
