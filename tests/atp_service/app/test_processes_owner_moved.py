"""Work forwarded to a group's owner, which stops answering with it in hand (here: the address it advertises
answers nothing) while the group it was sent for passes to another process — the owner keeping others, or
losing all: ended as soon as the routes name another owner for that group, never held to the caller's deadline
or to a bound of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from atp_client import Refusal, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import SHARDS, group_of, owned, start_process
from tests.atp_service.app.test_processes_owner_lost import DEADLINE_S, beside_a_silent_one
from tests.atp_service.app.test_processes_split import counts_block
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_forward import silent_peer
from tests.conftest import ServiceFactory
from tests.ports import held_port

__all__ = ["silent_peer", "start_process"]  # the fixtures, used here by name


def _sku_in(group: int) -> str:
    return next(s for s in (f"k{i}" for i in range(256)) if group_of(s) == group)


def _facts(stub: Any, skus: list[str]) -> Awaitable[Any]:
    at = int(time.time() * 1000) - 1000
    return stub.RecordEvents(pb.RecordEventsRequest(
        events=[receipt(f"in-{n}", sku, "DC", 5, t=at) for n, sku in enumerate(skus)]), timeout=DEADLINE_S)


def _availability(stub: Any, skus: list[str]) -> Awaitable[Any]:
    return stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location="DC") for s in skus]),
                                timeout=DEADLINE_S)


def _counts(stub: Any, skus: list[str]) -> Awaitable[Any]:
    return stub.LoadCounts(counts_block(skus, [5] * len(skus), int(time.time() * 1000) - 1000), timeout=DEADLINE_S)


async def _refusal(call: asyncio.Future[Any]) -> Refusal:
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
    finally:
        call.cancel()
    return typed(refused.value).refusal


@pytest.mark.parametrize(("call", "reason"), [(_facts, "OUTCOME_UNKNOWN"), (_availability, "GROUP_MOVED"),
                                              (_counts, "OUTCOME_UNKNOWN")],
                         ids=["RecordEvents", "GetAvailability", "LoadCounts"])
async def test_a_part_split_by_owner_ends_once_its_own_group_has_another_owner(
        start_process: ServiceFactory, silent_peer: tuple[str, asyncio.Event],
        call: Callable[[Any, list[str]], Awaitable[Any]], reason: str) -> None:
    """A part of a call split by owner (``Forwarder.ask_each``) was ended only once the routes named its owner
    for no group at all: an owner that stopped answering with the part in hand and lost the part's group, but
    not every group, held the caller to its whole deadline (DEADLINE_EXCEEDED), the group served again
    elsewhere all along. Here the silent process holds two groups, the part has a row of each, and two more
    processes join (a share of one group each): it hands one over and keeps the other. The part ends once its
    group has another owner: facts and counts in doubt (R7: a retry is safe, E8), a read ``GROUP_MOVED``."""
    silent, reached = silent_peer
    a, gone = await beside_a_silent_one(start_process, silent)
    held = sorted(owned(gone[0]))
    asked = asyncio.ensure_future(call(a[1].stub, [_sku_in(g) for g in held]))
    await asyncio.wait_for(reached.wait(), DEADLINE_S)
    for _ in range(SHARDS - 2):  # four processes, one group each: the silent one hands one of its two over
        await start_process(port=held_port(), host="127.0.0.1")
    refusal = await _refusal(asked)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, reason), refusal
    assert owned(gone[0]), "the silent process still owns a group: the part ended for its own group's move"
    assert len(a[0]._servicer.forwarder.owners) == 0, "no part watched once answered"


async def test_a_reserve_stream_part_sent_to_an_owner_that_lost_its_group_is_answered_in_doubt_at_once(
        start_process: ServiceFactory, silent_peer: tuple[str, asyncio.Event]) -> None:
    """A ``ReserveStream`` item of a group another process owns is sent to that owner on an outbound stream
    (``edge.streams``). The owner stopped answering with the part in hand and its groups passed to another
    process; the part went on waiting ``PEER_CALL_MAX_S`` (30 s) for the silent one, unwatched by the routes,
    and every batch behind it with it. Once the routes name another owner of the part's group the part is
    answered at once, in doubt (R7: the silent owner may have decided it; the same id at the new owner answers
    what was decided, R5). The read is bounded below 30 s: unbounded, the item was answered so only then."""
    silent, reached = silent_peer
    a, gone = await beside_a_silent_one(start_process, silent)
    sku = _sku_in(min(owned(gone[0])))
    stream = a[1].stub.ReserveStream()
    try:
        await stream.write(pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
            reservation_id="r-1", lines=[pb.Line(sku=sku, location="DC", quantity=1)])]))
        await asyncio.wait_for(reached.wait(), DEADLINE_S)
        await gone[0].stop(grace_s=0.1)
        answer = await asyncio.wait_for(stream.read(), DEADLINE_S)
    finally:
        stream.cancel()
    (outcome,) = answer.outcomes
    refusal = Refusal.from_status(outcome.error)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal
    assert len(a[0]._servicer.forwarder.owners) == 0, "no part watched once answered"
