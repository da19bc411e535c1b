"""Where an earlier order's part and an order's own part fall for each rule that tells them apart by age, with every
clock that judges anywhere within the gap the service allows, pure. The rules: ``forgotten`` (three quarters, by the
home's clock: ``reserve-opened``, ``was_confirmed``), ``forgotten_now`` (half, by the part's group's clock as a Reserve
opens the order) and ``_own`` (``others``, three quarters, by the home's clock). Each clock reads the true time plus a
lead under an eighth of the retention over the host furthest behind (R3; ``GroupClock``: a group's clock runs between
its host's and the host furthest ahead), not always the same lead: a home's clock falls back by its lead where its
group is taken again from older data. An earlier order's part is resolved before its order, which its home forgets a
retention later by its own clock; an own part is resolved after its order opened, or (the order opened again, its
home's record lost) replayed by the Reserve step at its group. Three quarters by the home's clock holds for an
earlier order's part R less two leads, its home's clock fallen back included: it rests on the one-gap bound."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import msgspec

from reservation import Limits, LineRecord, LineRequest, Outcome, Reservation, ReserveCommand, State
from reservation import _order_losses as losses
from reservation import _orders as orders
from reservation._order_anew import forgotten, forgotten_now

RETENTIONS_MS = (Limits().retention_ms, 1_000, 1_003)
"""The default, and two small ones: one a multiple of four, one not (the rules' integer bounds)."""
LINES = (LineRequest("B", "S1", 3),)


def gaps(limits: Limits) -> tuple[int, int]:
    """A clock's lead over the true time (the host furthest behind), at both ends of what the service allows: under
    an eighth of the retention."""
    return 0, (limits.retention_ms - 1) // 8


def clocks(limits: Limits, count: int) -> Iterator[tuple[int, ...]]:
    """Every way of setting ``count`` readings, each at either end of the gap allowed."""
    return itertools.product(gaps(limits), repeat=count)


def opened_at(at: int) -> Reservation:
    """Order "o", its one line at group 1, opened at ``at`` by its home's clock and decided."""
    order = orders.open_order(ReserveCommand("o", "", "", LINES, 60_000, False), (1,), at)
    return msgspec.structs.replace(order, pending=None)


def shipped_at(at: int) -> Reservation:
    """Its part at group 1, of its content, FULFILLED at ``at`` by that group's clock."""
    line = LineRecord("B", "S1", 3, 3, Outcome.GRANTED, 3, fulfilled=3)
    return Reservation(orders.part_id("o", 1), "", "", orders.PART_TTL_MS, False, State.FULFILLED, (line,), at - 1,
                       0, at)


def place(_sku: str) -> int:
    return 1


def judged_earlier(order: Reservation, part: Reservation, step_now: int, limits: Limits) -> tuple[bool, ...]:
    """What each rule says of ``part``: an earlier order's (True) or ``order``'s own (False)."""
    return (forgotten(part, order.created_at, limits), forgotten_now(part, step_now, limits),
            losses.others(order, {1: part}, place, limits) == [1], not losses.was_confirmed(order, part, limits))


def test_an_earlier_order_s_part_is_an_earlier_order_s_by_every_rule_and_every_clock_R3_R5() -> None:
    """The earliest an order of the id can open: its home resolved the earlier order as its last part was resolved,
    and forgot it the first instant past a retention after by its own clock (``Ledger.evict``), the new order opened
    then; each clock's lead set anywhere within the gap allowed at each moment (the part's group's as the part was
    resolved, the home's then, as it forgot and as the order opened, the group's as the Reserve step meets the part).
    Every rule takes the part for the earlier order's: reserved anew, never read as the order's line nor as proof
    of its confirmation."""
    for retention in RETENTIONS_MS:
        limits = Limits(retention_ms=retention)
        for group_then, home_then, home_forgot, home_now, group_now in clocks(limits, 5):
            resolved = 10 * retention  # the true time the earlier order's part, then the order, were resolved
            opened = resolved + home_then + retention + 1 - home_forgot  # true: when its home forgot it
            order = opened_at(opened + home_now)
            part = shipped_at(resolved + group_then)
            judged = judged_earlier(order, part, opened + group_now, limits)
            assert judged == (True,) * 4, (retention, group_then, home_then, home_forgot, home_now, group_now, judged)


def test_an_own_part_is_the_order_s_own_by_every_rule_and_every_clock_R3_R5() -> None:
    """Resolved after the order opened (at the same instant, the latest an earlier order's could be), or — the
    order opened again, its home's record lost — replayed by its group's Reserve step (resolved the longest before
    it that step replays, by that group's clock), the part is the order's own by every rule later judging it by the
    home's clock, each clock anywhere within the gap allowed: read as its line, and proof of its confirmation."""
    for retention in RETENTIONS_MS:
        limits = Limits(retention_ms=retention)
        for home, group in clocks(limits, 2):
            opened = 10 * retention  # the true time the order opened (again)
            order = opened_at(opened + home)
            after = judged_earlier(order, shipped_at(opened + group), opened + group, limits)
            assert after == (False,) * 4, (retention, home, group, after)
            replayed = shipped_at(opened + group - (retention // 2 - 1))
            again = judged_earlier(order, replayed, opened + group, limits)
            assert again == (False,) * 4, (retention, home, group, again)
