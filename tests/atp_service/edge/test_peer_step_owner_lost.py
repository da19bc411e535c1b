"""An order step sent to the process owning its group (``edge.peers.step_sender``) whose owner stopped answering
with it in hand: ended once the routes name another owner of its group, not at its own bound."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from atp_service.edge.forward import Forwarder
from atp_service.edge.peers import step_sender
from atp_service.edge.routing import Route, RoutingTable
from atp_service.engine.parts import ReadPart, SettleOrder, StepRequest
from atp_service.metrics import EdgeMetrics
from reservation import Reason, Unavailable
from tests.atp_service.edge.test_forward import silent_peer

__all__ = ["silent_peer"]  # the fixture, used here by name
OTHER = "127.0.0.1:1"
"""The process the routes name once the silent one lost a group (never called)."""


@pytest.mark.parametrize(("step", "said"), [(StepRequest(2, ReadPart("r-1#2")), "of shard group 2 lost it"),
                                            (StepRequest(-1, SettleOrder("r-1")), "lost every shard group")],
                         ids=["group", "wherever-held"])
async def test_an_order_step_to_an_owner_that_lost_its_group_ends_once_the_routes_say_so(
        silent_peer: tuple[str, asyncio.Event], step: StepRequest, said: str) -> None:
    """A saga's step sent to a peer waited ``STEP_TIMEOUT_S`` (5 s) whatever became of the group it was sent
    for: an owner that stopped answering with it in hand (paused, cut off) and whose group passed to another
    process held the saga — the order's lock, its units, its caller — the whole bound, the routes read meanwhile
    not told to it as they are to a forwarded call (``OwnerWatch``). It ends once the routes name another owner of
    its group (a step for wherever the order is held, ``-1``: once they name the silent one for no group),
    ``OUTCOME_UNKNOWN`` (R7: the step may have been made; every step is idempotent, the saga takes it again at
    the group's new owner). Here the silent peer keeps group 3 in the first case: only the step's own group moved."""
    silent, reached = silent_peer
    forwarder = Forwarder(EdgeMetrics())
    try:
        sending = asyncio.ensure_future(step_sender(forwarder, None)(silent, msgspec.msgpack.encode(step)))
        await asyncio.wait_for(reached.wait(), 30)  # the step is at the peer, waiting for its answer
        routes = (Route(0, OTHER, 1), Route(1, OTHER, 1), Route(2, OTHER, 2), Route(3, silent if step.group >= 0 else
                                                                                    OTHER, 1))
        forwarder.owners.routes_read(RoutingTable(4, OTHER, routes))
        with pytest.raises(Unavailable) as ended:
            await sending
        assert ended.value.reason is Reason.OUTCOME_UNKNOWN, ended.value
        assert said in ended.value.message, ended.value.message  # not its bound's DEADLINE_EXCEEDED
        assert len(forwarder.owners) == 0, "no step watched once ended"
    finally:
        await forwarder.aclose()
