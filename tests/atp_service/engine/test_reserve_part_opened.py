"""The Reserve of a part of an order spanning groups decided again (``ReserveOpened``: the time its order opened,
where the saga sending it did not open it), pure: what the part's group judges an earlier order's part by
(``_order_anew.forgotten``), and how it travels between processes of this release and of the one before."""

from __future__ import annotations

import msgspec
import pytest

from atp_service.engine import parts
from reservation import Limits, LineRequest, Reservation, ReserveCommand, State
from reservation import _order_losses as losses
from reservation import _orders as orders
from reservation._order_anew import forgotten_now

LIMITS = Limits()
HALF = LIMITS.retention_ms // 2
THREE_QUARTERS = LIMITS.retention_ms * 3 // 4
CMD = ReserveCommand(orders.part_id("o", 1), "", "", (LineRequest("B", "S1", 3),), orders.PART_TTL_MS, False)


class EarlierStep(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A step request as a process of the release before ``ReserveOpened`` reads it."""

    group: int
    step: (parts.ReservePart | parts.ApplyShare | parts.ReleaseAsRead | parts.ReadPart | parts.GiveUpPart
           | parts.CommitPart | parts.ResolveOrder | parts.SettleOrder)


def resolved_at(at: int) -> Reservation:
    """The part ``CMD`` reserves, FULFILLED at ``at``."""
    return Reservation(CMD.reservation_id, "", "", CMD.ttl_ms, False, State.FULFILLED, (), 0, 0, at)


def test_a_part_resolved_after_its_order_opened_is_its_own_however_long_ago_R5() -> None:
    """Judged by the time its order opened: resolved after it (or less than the clocks' gap before) it is the order's
    own, replayed — never reserved anew because its group's clock now runs half a retention past it (an order
    decided again long after, its home back from data older than its decision, R7); resolved three quarters of a
    retention or longer before it opened by its home's clock, an earlier order's of that id, reserved anew."""
    opened = 10 * LIMITS.retention_ms
    assert not losses.forgotten(resolved_at(opened + 1), opened, LIMITS)
    assert not losses.forgotten(resolved_at(opened - THREE_QUARTERS + 1), opened, LIMITS)
    assert losses.forgotten(resolved_at(opened - THREE_QUARTERS), opened, LIMITS)


def test_a_part_its_group_replayed_as_its_order_opened_is_its_own_by_a_home_clock_the_allowed_gap_ahead_R3_R5() -> None:
    """Defect: an order opened again (its home's record lost, R7), its shipped part replayed by its group's Reserve
    step (resolved under half the retention before by that group's clock), was judged again by its opening by its
    home's clock (just under a quarter of the retention ahead, two hosts' gaps) where the saga could not decide it at
    once — a step refused, or housekeeping deciding it again (``ReserveOpened``), past its TTL too — and taken, half
    the retention or longer before, for an earlier order's: no proof of its confirmation, reserved anew (the shipped
    line held again, or refused), the order given up while its caller ships it. An earlier order's part is resolved a
    retention less that gap before by the home's clock (``forgotten``: three quarters); one its group replays is its
    own by either."""
    replayed_at = 10 * LIMITS.retention_ms + HALF - 1  # by its group's clock: the last instant it is replayed
    part = resolved_at(10 * LIMITS.retention_ms)
    assert not forgotten_now(part, replayed_at, LIMITS) and forgotten_now(part, replayed_at + 1, LIMITS)
    opened = replayed_at + LIMITS.retention_ms // 4 - 1  # by the home's clock, the most the service allows ahead
    assert not losses.forgotten(part, opened, LIMITS)
    order = msgspec.structs.replace(orders.open_order(ReserveCommand("o", "", "", CMD.lines, 60_000, False), (1,),
                                                      opened), pending=None)
    assert losses.was_confirmed(order, part, LIMITS), "no proof of the confirmation of an order its caller ships"


def test_only_an_order_decided_again_tells_its_parts_when_it_opened_read_as_before_else() -> None:
    """The saga that opened the order sends the step the release before sent, read there as before in a rolling
    update; one deciding an order opened before tells its record's time, a step of its own kind that the release
    before refuses whole (``INVALID_ARGUMENT``: the order goes on once every process runs one release), never run
    there judging by its group's clock. This release reads both."""
    order = orders.open_order(ReserveCommand("o", "", "", CMD.lines, 60_000, False), (1,), 1234)
    fresh, again = parts.reserve_steps(order, {1: CMD}, True)[1], parts.reserve_steps(order, {1: CMD}, False)[1]
    assert (fresh, again) == (parts.ReservePart(CMD), parts.ReserveOpened(CMD, 1234))
    earlier = msgspec.msgpack.Decoder(EarlierStep)
    for step in (fresh, again):
        sent = msgspec.msgpack.encode(parts.StepRequest(1, step))
        assert msgspec.msgpack.decode(sent, type=parts.StepRequest).step == step
    assert earlier.decode(msgspec.msgpack.encode(parts.StepRequest(1, fresh))).step == fresh
    with pytest.raises(msgspec.ValidationError):
        earlier.decode(msgspec.msgpack.encode(parts.StepRequest(1, again)))
