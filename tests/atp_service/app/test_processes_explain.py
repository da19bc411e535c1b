"""ExplainAvailability with several processes on a keyspace (``ownership = leases``): a hold of an order
spanning groups is shown as its order — the id callers know, and the order's expiry — also where the
order's record is held by another process than the one explaining the position."""

from __future__ import annotations

import asyncio

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import Process, group_of, owner_of, processes, start_process
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

__all__ = ["start_process"]  # the fixture, used here by name


async def test_a_hold_of_an_order_held_at_another_process_shows_the_order_s_expiry(
        start_process: ServiceFactory) -> None:
    running, part, held = await _order_across_processes(start_process)
    assert held.state == pb.RESERVATION_STATE_HELD and held.HasField("expire_time")
    _, part_owner = owner_of(running, part)
    explained = await part_owner.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=part, location="DC"))
    (hold,) = explained.holds
    assert (hold.reservation_id, hold.state, hold.held) == ("o-explained", pb.RESERVATION_STATE_HELD, 1)
    assert hold.HasField("expire_time") and hold.expire_time == held.expire_time, "the order's expiry, as one " \
        "process shows it (tests/atp_service/app/test_cluster_mode.py)"


async def test_an_explain_whose_read_of_the_order_ended_in_grpc_s_own_cancel_is_answered_without_expiry(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the read of the order's expiry at its home's owner ended by gRPC's own cancellation (its peer
    channel closed under it, as one dropped from the pool was before ``PeerChannels``: grpc.aio ends a call on
    a closed channel with ``asyncio.CancelledError``, no one cancelled) was raised as the caller's own cancellation:
    gRPC sends nothing for a handler that raises it, so ExplainAvailability was never answered: its caller,
    which cancelled nothing, waited out its deadline (for ever with none). A read that fails is one that
    cannot be read now: the hold is shown without the expiry."""
    running, part, _ = await _order_across_processes(start_process)
    service, part_owner = owner_of(running, part)

    async def channel_closed(address: str, request: bytes) -> bytes:
        raise asyncio.CancelledError  # grpc.aio's end of a call whose channel was closed under it

    assert service.engine is not None
    monkeypatch.setattr(service.engine, "remote", channel_closed)
    explained = await part_owner.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=part, location="DC"),
                                                          timeout=10)  # unanswered before: DEADLINE_EXCEEDED
    (hold,) = explained.holds
    assert (hold.reservation_id, hold.state, hold.held) == ("o-explained", pb.RESERVATION_STATE_HELD, 1)
    assert not hold.HasField("expire_time")


async def _order_across_processes(start_process: ServiceFactory) -> tuple[list[Process], str, pb.Reservation]:
    """Two processes, and order ``o-explained`` held on a SKU of each: (the processes, the SKU whose group is not
    the order's home, the order as reserved). Its record lives in the lowest group of its lines: ``home``'s, another
    process than ``part``'s owner."""
    running = await processes(start_process, 2)
    skus = [f"x{i}" for i in range(64)]
    home, part = next((a, b) for a in skus for b in skus
                      if group_of(a) < group_of(b) and owner_of(running, a)[0] is not owner_of(running, b)[0])
    _, client = running[0]
    await client.record_events([receipt("in-home", home, "DC", 5), receipt("in-part", part, "DC", 5)])
    held = await client.reserve("o-explained", [(home, "DC", 2), (part, "DC", 1)], ttl_seconds=600)
    return running, part, held
