"""Orders spanning groups (``_orders``) after Redis lost acknowledged entries of some of their groups (R7: a
Redis Cluster node restarted from older data, a failover to a lagging replica) while the others kept theirs: what
the parts that remain say of the order, pure. The engine acts on it (``atp_service.engine.losses``).

- A part missing from a decided order (``lost_parts``): its hold is gone, so an order not yet confirmed cannot be
  confirmed whole; it is given up whole.
- A part confirmed under an order recorded HELD (``confirmed_by_parts``): a part is confirmed only by the share
  of a CONFIRM its order's home recorded pending first (R3), so the order was confirmed, and its home lost the
  record of it — its caller was most likely told CONFIRMED. Its confirmation is recorded again (``RESTORED``) and
  carried through to every part, its held ones confirmed; it is never expired, nor given up for a part Redis
  lost (``restored``): its confirmed parts' units are a confirmed order's, committed until released or shipped
  (Q3). Expired, they were offered again while its caller ships them (oversold). An expiry never releases a
  confirmed part (``_orders.apply_share``: R3, only HELD -> EXPIRED).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ._limits import Limits
from ._model import OrderStep, PendingOp, Reservation, State
from ._orders import PART_MARK, Place

RESTORED = PendingOp(OrderStep.CONFIRM, (), PART_MARK + "restored")
"""An order's confirmation recorded again from its confirmed parts (``confirmed_again``): the operation id a control
character no caller's id holds, so that it is told from a Confirm's (``restored``)."""


def lost_parts(order: Reservation, found: Mapping[int, Reservation], now: int, limits: Limits,
               place: Place) -> list[int]:
    """The groups whose part of the decided ``order`` Redis lost (a Redis Cluster node restarted from
    older data while the order's own node kept it): the order granted units there and the part is not
    in ``found``, though it cannot have been forgotten — a resolved part is forgotten only after the
    retention window (``Ledger.evict``), and the order is younger than half of it (the other half: a
    margin for the groups' clocks). An older order's missing part is taken as forgotten."""
    if order.pending is not None and order.pending.kind == OrderStep.RESERVE:
        return []  # undecided: a part missing was never reserved
    if now - order.created_at >= limits.retention_ms // 2:
        return []
    granted = {place(line.sku) for line in order.lines if line.granted}
    return [group for group in order.parts if group in granted and group not in found]


def was_confirmed(part: Reservation) -> bool:
    """Whether ``part`` was confirmed (CONFIRMED, or FULFILLED: only committed units are fulfilled, R4): only the
    share of a CONFIRM its order's home recorded pending first confirms a part (R3)."""
    return part.state in (State.CONFIRMED, State.FULFILLED)


def confirmed_by_parts(order: Reservation, parts: Mapping[int, Reservation]) -> bool:
    """Whether ``order`` is HELD with nothing pending though a part was confirmed (``was_confirmed``): Redis lost
    its confirmation at its home (R7: the home's group back from older data, the part's kept its own)."""
    return order.state == State.HELD and order.pending is None and any(map(was_confirmed, parts.values()))


def confirmed_again(order: Reservation, now: int) -> Reservation:
    """``order`` (``confirmed_by_parts``) with its confirmation recorded again, pending (``RESTORED``): carried
    through to every part as a pending CONFIRM is (its held parts confirmed), never expired (R3, Q3)."""
    return msgspec.structs.replace(order, state=State.CONFIRMED, expires_at=0, updated_at=now, pending=RESTORED)


def restored(order: Reservation) -> bool:
    """Whether ``order``'s pending change is its confirmation recorded again (``confirmed_again``): carried through
    whatever part Redis lost (``lost_parts``), never given up — its caller was most likely told CONFIRMED and its
    confirmed parts' units are committed (Q3). The units a lost part held are committed nowhere (a known gap)."""
    return order.pending == RESTORED
