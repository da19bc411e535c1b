"""A rolling update between the release before ``reserve-opened`` and this one (``ownership = leases``, two real
service processes on a real redis-server): an order spanning their groups decided again (its Reserve retried while
pending) sends its parts' groups ``ReserveOpened``, which a process of the release before cannot read
(``INVALID_ARGUMENT``). The order stays pending, its held part kept, never refused nor given up for it; the refusal is
said (``peer_step_unreadable``), and once that process runs this release the order is decided (R2, R5, R8)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import msgspec
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.engine import parts
from reservation import OrderStep, State
from reservation import _orders as orders
from tests.atp_service.app.test_processes import SHARDS, group_of, processes
from tests.atp_service.app.test_processes_order_steps import steps_not_reaching, stocked
from tests.conftest import ServiceFactory, services_on

LINES = 2, 3
"""Units of ``a`` (the home's group) and of ``b`` (the other process's) the order asks."""


class EarlierRequest(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A step request as a process of the release before ``ReserveOpened`` reads it."""

    group: int
    step: (parts.ReservePart | parts.ApplyShare | parts.ReleaseAsRead | parts.ReadPart | parts.GiveUpPart
           | parts.CommitPart | parts.ResolveOrder | parts.SettleOrder)


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


async def test_an_order_decided_again_stays_pending_while_a_process_of_the_release_before_refuses_its_step_R2_R5(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Order o of 2 ``a`` and 3 ``b``: its first Reserve's step to ``b``'s process does not land (its log silent),
    the caller told UNAVAILABLE, the order pending with 2 ``a`` held. That process then reads steps as the release
    before does. The Reserve retried, and housekeeping, send ``reserve-opened`` (not opened by their saga): refused
    there unread, the order is neither REJECTED nor given up — ``a``'s hold kept, nothing held at ``b`` —, the caller
    told UNAVAILABLE again, the peer named once at ERROR. Updated, the next retry decides it HELD, both lines."""
    (home, home_client), (other, _), a, b = await stocked(await processes(start_process, 2))
    assert home.engine is not None and other.engine is not None
    part_b = orders.part_id("o", group_of(b))
    silent = steps_not_reaching(monkeypatch, lambda step: isinstance(step, parts.ReservePart) and
                                step.cmd.reservation_id == part_b)
    asked = [(a, "DC", LINES[0]), (b, "DC", LINES[1])]
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await home_client.reserve("o", asked, ttl_seconds=600)
    assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
    monkeypatch.setattr(parts, "_requests", msgspec.msgpack.Decoder(EarlierRequest))  # before its log answers again
    silent[0] = False
    caplog.set_level(logging.ERROR, logger="atp_service")

    for _ in range(2):  # the caller's retry, then housekeeping driving it on: each refused unread at b's process
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await home_client.reserve("o", asked, ttl_seconds=600)
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE, again.value
        await home.engine.run_maintenance()
    order = home.engine.actors[group_of(a)].ledger.reservation("o")
    assert order is not None and order.pending is not None and order.pending.kind == OrderStep.RESERVE, order
    assert order.state == State.HELD, "decided while a part's group never read its step"
    held = [(q.reserved, q.committed) for q in await home_client.availability([(a, "DC"), (b, "DC")])]
    assert held == [(LINES[0], 0), (0, 0)], "a's hold given back, or b's held without its step read"
    told = [r for r in caplog.records if getattr(r, "event", None) == "peer_step_unreadable"]
    assert [getattr(r, "peer", None) for r in told] == [other._servicer.address], [r.getMessage() for r in told]

    monkeypatch.undo()  # b's process runs this release
    decided = await home_client.reserve("o", asked, ttl_seconds=600)
    assert decided.state == pb.RESERVATION_STATE_HELD, decided
    assert [(line.sku, line.granted) for line in decided.lines] == [(a, LINES[0]), (b, LINES[1])], decided
    held = [(q.reserved, q.committed) for q in await home_client.availability([(a, "DC"), (b, "DC")])]
    assert held == [(LINES[0], 0), (LINES[1], 0)]
