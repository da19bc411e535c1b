"""Records of the domain. msgspec Structs so the log and snapshots encode them directly."""

from __future__ import annotations

from enum import IntEnum

import msgspec


class State(IntEnum):
    """R3 reservation states; numbers match ``atp.v1.ReservationState``."""

    HELD = 1
    CONFIRMED = 2
    FULFILLED = 3
    RELEASED = 4
    EXPIRED = 5
    REJECTED = 6


TERMINAL = frozenset({State.FULFILLED, State.RELEASED, State.EXPIRED, State.REJECTED})


class Outcome(IntEnum):
    """Per-line decision of a Reserve; numbers match ``atp.v1.LineOutcome``."""

    GRANTED = 1
    INSUFFICIENT = 2
    NOT_ATTEMPTED = 3


class FactKind(IntEnum):
    """Numbers match ``atp.v1.FactKind``."""

    SALE = 1
    RETURN = 2
    RECEIPT = 3
    ADJUST = 4
    SHIPMENT = 5
    COUNT = 6


class FactOutcome(IntEnum):
    APPLIED = 1
    DUPLICATE = 2
    ABSORBED = 3
    QUARANTINED = 4
    INVALID = 5


class LineRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    sku: str
    location: str
    quantity: int


class ReserveCommand(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    """A validated Reserve: lines already summed per position (R1)."""

    reservation_id: str
    order_ref: str
    channel: str
    lines: tuple[LineRequest, ...]
    ttl_ms: int
    allow_partial: bool
    ttl_default: bool = False
    """``ttl_ms`` is the default TTL of its time: the request left ``ttl`` unset (R5 compares the
    TTL as sent, so a retry after the default changed is still the same request)."""


class LineRecord(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """One position of a reservation: the decision and what became of the granted units."""

    sku: str
    location: str
    requested: int
    granted: int
    outcome: int
    available: int
    held: int = 0
    committed: int = 0
    fulfilled: int = 0
    released: int = 0
    group: str = ""
    """The location group the line was requested against ("" for a plain line); its units may be
    split over several records of the same group, each at one member location."""

    @property
    def outstanding(self) -> int:
        return self.held + self.committed


class PendingOp(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    """A change an order spanning groups has decided but its parts have not all applied yet: the
    order's home records it durably first, then each part applies its share (``_orders``)."""

    kind: int
    """``OrderStep``."""
    lines: tuple[LineRequest, ...] = ()
    operation_id: str = ""


class OrderStep(IntEnum):
    """What a ``PendingOp`` asks of an order's parts."""

    RESERVE = 1
    CONFIRM = 2
    RELEASE = 3
    FULFIL = 4
    EXPIRE = 5


class Reservation(msgspec.Struct, array_like=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    reservation_id: str
    order_ref: str
    channel: str
    ttl_ms: int
    allow_partial: bool
    state: int
    # A tuple of gc=False structs: the collector stops tracking it, so hundreds of thousands of
    # live reservations add nothing to a full collection's pause.
    lines: tuple[LineRecord, ...]
    created_at: int
    expires_at: int
    updated_at: int
    # Partial release/fulfil operation ids already applied -> content key (R5 retries).
    ops: dict[str, str] = msgspec.field(default_factory=dict)
    parts: tuple[int, ...] = ()
    """An order whose lines span groups (``_orders``): the groups holding its parts (empty for any
    other reservation). Its units are held by the parts; this record holds its decisions."""
    pending: PendingOp | None = None
    """An order's change recorded but not yet applied by every part (None: settled)."""
    ttl_default: bool = False
    """The Reserve left ``ttl`` unset (``ReserveCommand.ttl_default``)."""

    def clone(self) -> Reservation:
        lines = tuple(msgspec.structs.replace(line) for line in self.lines)
        return msgspec.structs.replace(self, lines=lines, ops=dict(self.ops))

    @property
    def is_order(self) -> bool:
        """Whether this is the record of an order spanning groups (its units are in its parts)."""
        return bool(self.parts)


class Fact(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    """A validated POS/WMS fact (E1)."""

    event_id: str
    source: str
    kind: int
    sku: str
    location: str
    quantity: int
    event_time: int
    reservation_id: str = ""

    @property
    def delta(self) -> int:
        """Signed on-hand change of a delta kind (not meaningful for COUNT)."""
        return -self.quantity if self.kind in OUTGOING_KINDS else self.quantity


OUTGOING_KINDS = frozenset({int(FactKind.SALE), int(FactKind.SHIPMENT)})
"""Fact kinds whose quantity leaves on_hand (Q1)."""


class Quantities(msgspec.Struct, frozen=True, array_like=True, gc=False):
    on_hand: int
    reserved: int
    committed: int
    safety_stock: int

    @property
    def available(self) -> int:
        """Q5; may be negative (oversold), never clamped here."""
        return self.on_hand - self.reserved - self.committed - self.safety_stock


ZERO = Quantities(0, 0, 0, 0)
