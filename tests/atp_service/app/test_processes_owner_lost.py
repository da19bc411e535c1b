"""A call forwarded to its group's owner, which stops answering with it in hand (paused, hung, cut off from
the other processes) and loses the group to another process: answered as soon as the routes say so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from atp_client import Refusal, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.app.test_processes import SHARDS, group_of, members_read, owned, start_process
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_forward import silent_peer
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["silent_peer", "start_process"]  # the fixtures, used here by name
DEADLINE_S = 20.0
"""The caller's deadline: far past the lease's hand-over (a balance of 200 ms), well short of the test's limit."""


async def beside_a_silent_one(start_process: ServiceFactory, silent: str) -> tuple[Any, Any]:
    """Two processes sharing the groups, the second advertising ``silent`` (an address that answers nothing),
    once the first knows the second's groups there."""
    a = await start_process(port=held_port(), host="127.0.0.1")
    gone = await start_process(port=held_port(), host="127.0.0.1", advertise_address=silent)
    await members_read([a, gone])
    await until(lambda: len(owned(gone[0])) == SHARDS // 2 and len(owned(a[0])) == SHARDS // 2
                and a[0].membership is not None and all(a[0].membership.where(g)[0] == silent
                                                        for g in owned(gone[0])),
                "the groups split, the first process knowing the other's", 60)
    return a, gone


async def refused_once_handed_over(call: asyncio.Future[Any], reached: asyncio.Event, gone: AtpService) -> Refusal:
    """``call``'s refusal: once it is in the silent process's hands, that process stops, its groups handed over
    to the first."""
    try:
        await asyncio.wait_for(reached.wait(), DEADLINE_S)
        await gone.stop(grace_s=0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
    finally:
        call.cancel()
    return typed(refused.value).refusal


async def test_a_change_forwarded_to_an_owner_that_lost_its_group_is_answered_in_doubt_not_at_its_deadline(
        start_process: ServiceFactory, silent_peer: tuple[str, asyncio.Event]) -> None:
    """A Reserve sent to a process not owning its group is forwarded to the owner. The owner stopped
    answering with it in hand (here: the address it advertises answers nothing) and its group was taken
    by another process; the forwarded call went on waiting for the silent one until the caller's deadline:
    DEADLINE_EXCEEDED after the whole deadline, on every node loss — an OMS's checkout backed up behind
    it though the group had an owner again within a lease. Once the routes name another owner the call is
    answered at once, in doubt (R7: the silent owner may have made it before it went silent; the same ids
    at the new owner answer what was decided, R5)."""
    silent, reached = silent_peer
    a, gone = await beside_a_silent_one(start_process, silent)
    sku = next(s for s in (f"k{i}" for i in range(64)) if group_of(s) in owned(gone[0]))
    call = asyncio.ensure_future(a[1].stub.Reserve(pb.ReserveRequest(
        reservation_id="r-1", lines=[pb.Line(sku=sku, location="DC", quantity=1)]), timeout=DEADLINE_S))
    refusal = await refused_once_handed_over(call, reached, gone[0])
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal
    assert len(a[0]._servicer.forwarder.owners) == 0, "no call watched once answered"


async def test_a_change_asked_of_a_holder_that_lost_every_group_is_answered_in_doubt_not_at_its_deadline(
        start_process: ServiceFactory, silent_peer: tuple[str, asyncio.Event]) -> None:
    """A Confirm of a reservation the process called does not hold is asked of every other process
    (``_locate``): the one holding it answers. A process that stopped answering with the ask in hand
    (here: the address it advertises answers nothing) held the caller to its whole deadline,
    DEADLINE_EXCEEDED, though every group it held passed to another process within a lease — the
    forwarded calls' watch covered only a call sent to one group's owner. Once the routes name it for
    no group the ask ends: in doubt (R7: it may have confirmed it before it went silent; the same id
    answers what was decided, asked of the groups' new owners)."""
    silent, reached = silent_peer
    a, gone = await beside_a_silent_one(start_process, silent)
    call = asyncio.ensure_future(a[1].stub.Confirm(pb.ConfirmRequest(reservation_id="r-1"), timeout=DEADLINE_S))
    refusal = await refused_once_handed_over(call, reached, gone[0])
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal
    assert len(a[0]._servicer.forwarder.owners) == 0, "no ask watched once answered"


def _availability(stub: Any, sku: str) -> Awaitable[Any]:
    return stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=sku, location="DC")]),
                                timeout=DEADLINE_S)


def _facts(stub: Any, sku: str) -> Awaitable[Any]:
    fact = receipt("in-1", sku, "DC", 5, t=int(time.time() * 1000) - 1000)
    return stub.RecordEvents(pb.RecordEventsRequest(events=[fact]), timeout=DEADLINE_S)


@pytest.mark.parametrize(("call", "reason"), [(_facts, "OUTCOME_UNKNOWN"), (_availability, "GROUP_MOVED")],
                         ids=["RecordEvents", "GetAvailability"])
async def test_a_call_split_by_owner_whose_owner_lost_every_group_is_answered_not_at_its_deadline(
        start_process: ServiceFactory, silent_peer: tuple[str, asyncio.Event],
        call: Callable[[Any, str], Awaitable[Any]], reason: str) -> None:
    """``RecordEvents``, ``GetAvailability`` and ``LoadCounts`` are split by owner, each part sent to its owner
    (``Forwarder.ask_each``). An owner that stopped answering with its part in hand held the caller to its whole
    deadline (DEADLINE_EXCEEDED) though its groups passed to another process within a lease: the forwarded
    calls' watch covered only a call sent whole to one group's owner. Once the routes name that owner for no
    group the part ends: facts in doubt (R7: a retry of the call is safe, E8), a read ``GROUP_MOVED`` (retried)."""
    silent, reached = silent_peer
    a, gone = await beside_a_silent_one(start_process, silent)
    sku = next(s for s in (f"k{i}" for i in range(64)) if group_of(s) in owned(gone[0]))
    asked = asyncio.ensure_future(call(a[1].stub, sku))
    refusal = await refused_once_handed_over(asked, reached, gone[0])
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, reason), refusal
    assert len(a[0]._servicer.forwarder.owners) == 0, "no part watched once answered"
