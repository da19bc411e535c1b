"""An order's id reserved again with the same content once its first order is forgotten at its home (R5: a new attempt),
on a real service and a real redis-server (``ownership = leases``, one process serving both groups), where the home
group's clock runs half a retention ahead of the other group's: the home group came back to this process from one whose
clock ran that far ahead, and counts on from what that one stamped (``GroupClock``; half the retention bounds four of
the gaps between the hosts' clocks the service allows, each under an eighth of it, added up where groups move,
``_order_losses.lost_parts``). The home forgets the first order half a retention before the other group's clock says its
part there is past its retention: that part, resolved, is still found where the second order reserves, and is never
taken for the second order's decision (R2, R3, R5)."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine.clock import GroupClock
from reservation import Limits, State
from reservation import _orders as orders
from tests.atp_service.app.leased_pair import stocked_pair
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory

RETENTION_MS = Limits().retention_ms
HALF_MS = RETENTION_MS // 2


class Behind:
    """A process's clock ``by`` ms behind ``base``: what a group taken by a host whose clock runs that far behind
    counts on from, where the group logged nothing for that long before (``GroupClock``: never below what was logged,
    so it starts at the process's own clock)."""

    def __init__(self, base: ManualClock, by: int) -> None:
        self._base, self._by = base, by

    def now_ms(self) -> int:
        return self._base.now_ms() - self._by


@pytest.mark.parametrize("first", ["released", "fulfilled"])
@pytest.mark.parametrize("allow_partial", [True, False], ids=["partial", "whole"])
@pytest.mark.parametrize("skew", ["home_ahead", "part_s_group_behind"])
async def test_a_part_the_home_forgot_by_its_clock_ahead_is_reserved_anew_never_decided_with_R5_R2_R3(
        start_service: ServiceFactory, first: str, allow_partial: bool, skew: str) -> None:
    """Defect: order ``o`` (2 of ``a`` at its home's group, 2 of ``b`` at the other) resolved, its home group's clock
    then half a retention ahead of ``b``'s group's, and ``o`` reserved again with the same content once its home forgot
    the first (or ``b``'s group's clock as far behind the one that stamped the first order's part there). The part
    step judged the first order's part at ``b``'s group by that group's clock alone (not past its
    retention there) and replayed it as the second order's: released, the second order was decided with that line
    as the first had it, nothing held there (``allow_partial``: HELD with its ``b`` line released; all or nothing:
    REJECTED though its units fit, its hold at ``a`` given back); fulfilled, it was decided again CONFIRMED from it —
    its caller told CONFIRMED unasked, nothing held or committed at ``b`` for it. A resolved part the home may have
    forgotten by a clock the allowed gap ahead is another order's: reserved anew, as it is once evicted."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    asked = [(a, "S1", 2), (b, "S1", 2)]
    await client.reserve("o", asked, ttl_seconds=60, allow_partial=allow_partial)
    if first == "fulfilled":
        await client.confirm("o")
        await client.fulfill("o")
    else:
        await client.release("o")
    home, group = engine.place(a), engine.place(b)
    assert engine.home_of("o") == home != group
    if skew == "home_ahead":
        engine.actors[home].clock = GroupClock(clock, clock.now_ms() + HALF_MS)  # what taking it back counts on from
    else:  # b's group idle half a retention, then taken by a host whose clock runs that far behind
        clock.advance(HALF_MS)
        engine.actors[group].clock = Behind(clock, HALF_MS)
    clock.advance(HALF_MS + 1)
    await engine.run_maintenance()  # eviction, each group by its own clock
    assert engine.actors[home].ledger.reservation("o") is None, "forgotten at its home"
    old = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert old is not None and old.state in (State.RELEASED, State.FULFILLED), "not yet past its retention there"

    again = await client.reserve("o", asked, ttl_seconds=60, allow_partial=allow_partial)
    assert (again.state, again.replayed) == (pb.RESERVATION_STATE_HELD, False), again
    assert [(line.outcome, line.granted) for line in again.lines] == [(pb.LINE_OUTCOME_GRANTED, 2)] * 2, again
    there = [(q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])]
    assert there == [(2, 0), (2, 0)], "nothing held at b for the second order"
    part = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert part is not None and part.state == State.HELD and part.created_at > old.updated_at
    assert (await client.reserve("o", asked, ttl_seconds=60, allow_partial=allow_partial)).replayed  # R5
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_HELD, "confirmed unasked"


@pytest.mark.parametrize("resolved", ["released", "fulfilled"])
async def test_a_retry_of_a_live_order_long_after_a_line_resolved_replays_it_never_holds_that_line_again_R5(
        start_service: ServiceFactory, resolved: str) -> None:
    """Its home remembering the order (CONFIRMED, its ``b`` line released or shipped), a retry of its Reserve half a
    retention and more after that line's part was resolved is a replay of the order's decision (R5): its parts are
    never reserved again, ``b``'s units not held again, the order read as it stands."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    asked = [(a, "S1", 2), (b, "S1", 2)]
    await client.reserve("o", asked, ttl_seconds=60)
    await client.confirm("o")
    change = client.release if resolved == "released" else client.fulfill
    await change("o", [(b, "S1", 2)], "line-b")
    clock.advance(HALF_MS + 1)
    again = await client.reserve("o", asked, ttl_seconds=60)
    assert (again.state, again.replayed) == (pb.RESERVATION_STATE_HELD, True), again
    there = [(q.reserved, q.committed, q.on_hand) for q in await client.availability([(a, "S1"), (b, "S1")])]
    assert there == [(0, 2, 5), (0, 0, 5 if resolved == "released" else 3)], "b held again"
    order = await client.get_reservation("o")
    assert order.state == pb.RESERVATION_STATE_CONFIRMED, order
    part = engine.actors[engine.place(b)].ledger.reservation(orders.part_id("o", engine.place(b)))
    assert part is not None and part.state == (State.RELEASED if resolved == "released" else State.FULFILLED)


async def test_an_earlier_order_s_shipped_part_its_group_refuses_to_replace_never_decides_the_new_order_R3_R5(
        start_service: ServiceFactory) -> None:
    """Defect (found by review): order ``o`` (2 of ``a``, 1 of ``b``) shipped whole and forgotten at its home (its
    clock half a retention ahead of ``b``'s group's), its FULFILLED part still at ``b``'s group; ``o`` reserved again.
    That part is an earlier order's, to be reserved anew, but ``b``'s group refuses the new part (its bound on live
    records reached on a busy day: CAPACITY_REACHED, nothing written), leaving the earlier part there. Read back after
    the refusal, that FULFILLED part was taken for proof the new order had been decided and confirmed (its home back
    from older data): decided CONFIRMED unasked, its caller told both lines held while nothing is held or committed at
    ``b`` for it — that unit sold to others too. A part resolved half the retention or longer before the order opened
    proves nothing of it (R3): the order is refused as a Reserve there is, ``a``'s hold given back."""
    clock = ManualClock(T0)
    limits = dataclasses.replace(Limits(), max_live_reservations_per_shard=2)
    _, client, engine, a, b = await stocked_pair(start_service, clock, limits=limits)
    asked = [(a, "S1", 2), (b, "S1", 1)]
    await client.reserve("o", asked, ttl_seconds=60)
    await client.confirm("o")
    await client.fulfill("o")
    home, group = engine.place(a), engine.place(b)
    engine.actors[home].clock = GroupClock(clock, clock.now_ms() + HALF_MS)  # what taking it back counts on from
    clock.advance(HALF_MS + 1)
    await engine.run_maintenance()
    assert engine.actors[home].ledger.reservation("o") is None, "forgotten at its home"
    old = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert old is not None and old.state == State.FULFILLED, "not yet past its retention there"
    for other in ("x1", "x2"):  # b's group at its bound on live records
        assert (await client.reserve(other, [(b, "S1", 1)], ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.reserve("o", asked, ttl_seconds=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    there = [(q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])]
    assert there == [(0, 0), (2, 0)], "a's hold kept for a refused order"
    assert (await client.get_reservation("o")).state != pb.RESERVATION_STATE_CONFIRMED, "confirmed unasked"
