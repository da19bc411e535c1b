"""The simulation's checker of committed units (``stamps.py``) on an order whose home's record Redis took back to
undecided (its Reserve pending) while a part of it stayed CONFIRMED: it can fail — the order given up undecided
with that part's committed units released, or refused with the part left confirmed — and passes where the order is
decided again, CONFIRMED (R3, Q3)."""

from __future__ import annotations

import msgspec
import pytest

from reservation import AlreadyExists, LineRecord, LogEntry, Outcome, Reservation, State, encode_entry
from reservation import _order_losses as losses
from reservation import _orders as orders
from reservation._events import ReservationSaved
from tests.reservation.helpers import cmd
from tests.sim.checks import Violation
from tests.sim.simlog import SimLog
from tests.sim.stamps import StampChecker

ASKED = cmd("o", ("A", "S1", 2), ("B", "S1", 3))
"""2 of A (group 1, the order's home) and 3 of B (group 0)."""
LINE = LineRecord("B", "S1", 3, 3, Outcome.GRANTED, 5, committed=3)
PART = Reservation(orders.part_id("o", 0), "ref", "web", orders.PART_TTL_MS, False, State.CONFIRMED, (LINE,),
                   1_000, 0, 1_000)
"""Group 0's part, confirmed."""


def _logged(*records: Reservation, ts: int = 1_000) -> list[tuple[int, bytes]]:
    return [(seq, encode_entry(LogEntry(ts=ts + seq, events=[ReservationSaved(rec)])))
            for seq, rec in enumerate(records, 1)]


def _checked(part_history: list[Reservation], home_history: list[Reservation]) -> None:
    log = SimLog()
    log.history[0] = _logged(*part_history)
    log.history[1] = _logged(*home_history, ts=70_000)
    StampChecker(log, set()).check()


def test_a_confirmed_part_released_by_its_order_given_up_over_its_reserve_pending_is_a_violation_R3_Q3() -> None:
    """Past its TTL the undecided record gave the order up whole (``_orders.abandoned``), every part released, the
    confirmed one too: given up whole, as a Confirm stopped half-way is — but over its Reserve pending."""
    opened = orders.open_order(ASKED, (0, 1), 1_000)
    given_up = orders.abandoned(opened, 70_000)
    freed = msgspec.structs.replace(PART, state=State.RELEASED, lines=(
        msgspec.structs.replace(LINE, committed=0, released=3),), updated_at=70_000)
    with pytest.raises(Violation, match=r"R3/Q3: 'o\\x1f0' released 3 committed units .* its order EXPIRED "
                                        r"\(given up over its Reserve pending\)"):
        _checked([PART, freed], [opened, given_up, orders.settled(given_up, 70_001)])
    granted = tuple(LineRecord(line.sku, line.location, line.requested, line.requested, Outcome.GRANTED, 5)
                    for line in opened.lines)
    held = msgspec.structs.replace(opened, pending=None, lines=granted)  # given up once decided (a part lost)
    _checked([PART, freed], [opened, held, given_up, orders.settled(given_up, 70_001)])


def test_an_order_refused_over_its_reserve_pending_while_a_part_is_confirmed_is_a_violation_R3() -> None:
    """The undecided record decided as a Reserve decides it: refused, its held part released, the confirmed part
    left committed under a REJECTED order. Decided again from its parts instead (CONFIRMED), it passes."""
    opened = orders.open_order(ASKED, (0, 1), 1_000)
    parts = {0: PART}
    rejected = msgspec.structs.replace(opened, state=State.REJECTED, pending=None, expires_at=0)
    with pytest.raises(Violation, match=r"R3/Q3: 'o\\x1f0' is CONFIRMED under its order REJECTED, refused over "
                                        r"its Reserve pending"):
        _checked([PART], [opened, rejected])
    again = losses.decided_again(opened, parts, 70_000)
    _checked([PART], [opened, again, orders.settled(again, 70_001, parts)])


def test_a_confirmed_part_of_other_content_under_an_order_given_up_over_its_reserve_pending_is_kept_R5_Q3() -> None:
    """The order's record lost whole at its home and its id reserved again with other content: refused (its part's id
    taken, R5) and given up, the part — the first order's, confirmed — kept (``_order_losses.give_up_part``). That
    passes; the same part kept under an order of its own content given up so does not."""
    for asked, kept in ((cmd("o", ("A", "S1", 2), ("B", "S1", 1)), True), (ASKED, False)):
        opened = orders.open_order(asked, (0, 1), 1_000)
        given_up = orders.abandoned(opened, 70_000, AlreadyExists("lines", "taken"))
        home = [opened, given_up, orders.settled(given_up, 70_001)]
        if kept:
            _checked([PART], home)
        else:
            with pytest.raises(Violation, match=r"is CONFIRMED under its order EXPIRED, given up over its Reserve"):
                _checked([PART], home)
