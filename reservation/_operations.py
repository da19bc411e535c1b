"""The reservation lifecycle (R1-R5) as pure functions over a ``View`` of one or more shards.

Every function checks everything it can before it changes anything, so a
refusal leaves no trace. The one deliberate exception is lazy expiry: a command
that finds a HELD reservation past its TTL first expires it (R3), which is a
real change that stands, and then refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from ._errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound, Reason
from ._limits import Limits
from ._model import LineRecord, LineRequest, Outcome, Reservation, State
from ._reserve import ReserveView as ReserveView
from ._reserve import View as View
from ._reserve import requested_lines as requested_lines
from ._reserve import reserve as reserve
from ._reserve import reserve_otherwise as reserve_otherwise
from ._reserve import same_content as same_content


def confirm(view: View, reservation_id: str, now: int) -> Reservation:
    """R3: HELD -> CONFIRMED; held units become committed and stop expiring."""
    rec = _current(view, reservation_id, now)
    if rec.state == State.CONFIRMED:
        return rec  # R5: a retried confirm is harmless
    if rec.state != State.HELD:
        raise FailedPrecondition(State(rec.state).name, "only a HELD reservation can be confirmed", rec.reservation_id)
    new = rec.clone()
    for line in new.lines:
        if line.held:
            view.move_hold(line.sku, line.location, -line.held, line.held)
            line.committed, line.held = line.committed + line.held, 0
    new.state, new.expires_at, new.updated_at = State.CONFIRMED, 0, now
    view.save(new)
    return new


def release(view: View, reservation_id: str, lines: tuple[LineRequest, ...], operation_id: str, now: int,
            limits: Limits) -> Reservation:
    """R3: give back held or committed units, all of them or per line."""
    rec, retried = _current_or_retry(view, reservation_id, lines, operation_id, now, State.RELEASED)
    if retried:
        return rec
    if rec.state not in (State.HELD, State.CONFIRMED):
        raise FailedPrecondition(State(rec.state).name, "only a HELD or CONFIRMED reservation can be released",
                                 rec.reservation_id)
    amounts = _amounts(rec, lines, lambda line: line.outstanding, "outstanding")
    new = _with_op(rec, operation_id, State.RELEASED, lines, limits)
    for line, qty in zip(new.lines, amounts, strict=True):
        if qty:
            from_held = min(qty, line.held)
            from_committed = qty - from_held
            view.move_hold(line.sku, line.location, -from_held, -from_committed)
            line.held -= from_held
            line.committed -= from_committed
            line.released += qty
    _settle(new, now)
    if new.state == State.FULFILLED:  # partly shipped: a release settled it, not a fulfilment (_settled_by)
        new.ops[_RELEASE_SETTLED] = ""
    view.save(new)
    return new


def fulfill(view: View, reservation_id: str, lines: tuple[LineRequest, ...], operation_id: str, now: int,
            limits: Limits, *, ship: bool = True, ship_at: int | None = None) -> Reservation:
    """R4: shipped or picked-up units leave `committed` and `on_hand` together. ``ship=False`` when a
    SHIPMENT fact has already moved `on_hand` itself (fulfilment by fact). ``ship_at``: when the units left,
    where that was before ``now`` (the shipment ordered among facts by it, E1: a count stamped after it
    absorbed it, E4); ``now`` if None."""
    rec, retried = _current_or_retry(view, reservation_id, lines, operation_id, now, State.FULFILLED)
    if retried:
        return rec
    if rec.state == State.HELD:
        raise FailedPrecondition("HELD", "confirm the reservation before fulfilling it", rec.reservation_id)
    if rec.state != State.CONFIRMED:
        raise FailedPrecondition(State(rec.state).name, "only a CONFIRMED reservation can be fulfilled",
                                 rec.reservation_id)
    amounts = _amounts(rec, lines, lambda line: line.committed, "committed")
    new = _with_op(rec, operation_id, State.FULFILLED, lines, limits)
    for index, (line, qty) in enumerate(zip(new.lines, amounts, strict=True)):
        if qty:
            if ship:
                view.ship(line.sku, line.location, qty, now if ship_at is None else ship_at,
                          f"fulfil:{reservation_id}:{operation_id}:{index}")
            else:
                view.move_hold(line.sku, line.location, 0, -qty)
            line.committed -= qty
            line.fulfilled += qty
    _settle(new, now)
    view.save(new)
    return new


def fulfill_committed(view: View, reservation_id: str, lines: tuple[LineRequest, ...], now: int,
                      limits: Limits) -> Reservation:
    """R4 by a SHIPMENT fact naming the reservation: only `committed` moves here. A fact shipping
    more units than its line has committed fulfils every committed unit (they all left with it; the
    fact moved `on_hand` by its whole quantity, as any SHIPMENT): refusing it left them committed
    for good (Q3), counted twice against availability beside the units already gone.

    No operation is recorded: the caller applied the fact in the same step, and its identity makes a
    resend a duplicate that fulfils nothing (E8). Recorded, each fact was one of the partial operations
    ``max_ops_per_reservation`` bounds, and the fact past it (a line shipped in many parcels, a line of a
    long order shipped under one id) moved the stock and fulfilled nothing, its units committed for good."""
    lines = _within_committed(view.reservation(reservation_id), lines)
    return fulfill(view, reservation_id, lines, "", now, limits, ship=False)


def per_position(lines: Iterable[LineRecord], amount: Callable[[LineRecord], int]) -> dict[tuple[str, str], int]:
    """``amount`` of ``lines`` summed per position: one may stand in several records of a reservation (a
    plain line and a group line given by the same location, two groups sharing a member), and a cap
    or a check against its last record alone left units held or committed for good (R3, R4)."""
    sums: dict[tuple[str, str], int] = {}
    for line in lines:
        sums[(line.sku, line.location)] = sums.get((line.sku, line.location), 0) + amount(line)
    return sums


def _within_committed(rec: Reservation | None, lines: tuple[LineRequest, ...]) -> tuple[LineRequest, ...]:
    """``lines`` capped at what each has committed, for a CONFIRMED reservation. A line with nothing
    committed is left as asked (``fulfill`` refuses it, naming why)."""
    if rec is None or rec.state != State.CONFIRMED:
        return lines
    committed = per_position(rec.lines, lambda line: line.committed)
    capped = []
    for req in lines:
        room = committed.get((req.sku, req.location), 0)
        capped.append(LineRequest(req.sku, req.location, min(req.quantity, room)) if room else req)
    return tuple(capped)


def expire(view: View, reservation_id: str, now: int) -> Reservation | None:
    """R3: HELD -> EXPIRED once its TTL has passed; None when there is nothing to expire."""
    rec = view.reservation(reservation_id)
    if rec is None or rec.state != State.HELD or rec.expires_at > now:
        return None
    return expire_held(view, rec, now)


def expire_held(view: View, rec: Reservation, now: int) -> Reservation:
    """R3: HELD ``rec`` -> EXPIRED, its held units given back (none counted released), its own TTL not
    asked: ``expire``'s change, and a part's whose order expired (a part never expires by itself)."""
    new = rec.clone()
    for line in new.lines:
        if line.held:
            view.move_hold(line.sku, line.location, -line.held, 0)
            line.held = 0
    new.state, new.expires_at, new.updated_at = State.EXPIRED, 0, now
    view.save(new)
    return new


# -- helpers ------------------------------------------------------------------


def _current(view: View, reservation_id: str, now: int) -> Reservation:
    rec = view.reservation(reservation_id)
    if rec is None:
        raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
    expired = expire(view, reservation_id, now)
    return expired if expired is not None else rec


_OP_PART = "\x1f"
_OP_LINE = "\x1e"
_OP_NAMES = {State.RELEASED.name: "release", State.FULFILLED.name: "fulfilment"}


def _op_key(done: State, lines: tuple[LineRequest, ...]) -> str:
    """What an operation id stands for (R5): the operation (a release or a fulfilment, by the state
    it ends in) and its lines. Ids hold no control characters (``check_id``), so these separators
    keep apart what ``|`` did not (``a|b``@``c`` and ``a``@``b|c``)."""
    parts = (f"{line.sku}{_OP_PART}{line.location}{_OP_PART}{line.quantity}" for line in lines)
    return done.name + _OP_LINE + _OP_LINE.join(parts)  # the separator even without lines: not an old entry


def _same_operation(recorded: str, done: State, lines: tuple[LineRequest, ...]) -> bool:
    """Whether ``recorded`` (an ops entry) is this operation. An entry made before operations were
    keyed with their kind (no separator in it) is compared as it was then: a retry made across an
    upgrade is still a retry."""
    if _OP_LINE not in recorded:
        return recorded == ";".join(f"{line.sku}|{line.location}|{line.quantity}" for line in lines)
    return recorded == _op_key(done, lines)


def _reused(operation_id: str, recorded: str, done: State) -> AlreadyExists:
    kind = recorded.partition(_OP_LINE)[0] if _OP_LINE in recorded else done.name
    what = "applied with other lines" if kind == done.name else f"a {_OP_NAMES[kind]}, not a {_OP_NAMES[done.name]}"
    return AlreadyExists("operation_id", f"operation {operation_id!r} was {what}", Reason.OPERATION_ID_REUSED)


def _current_or_retry(view: View, reservation_id: str, lines: tuple[LineRequest, ...], operation_id: str, now: int,
                      done: State) -> tuple[Reservation, bool]:
    """The record now, and whether this call only retries what already happened (R5: harmless): a whole release/
    fulfil of a reservation one settled (``_settled_by``), or a partial one whose ``operation_id`` was applied."""
    rec = _current(view, reservation_id, now)
    if not lines and _settled_by(rec, done):
        return rec, True
    if not operation_id or operation_id not in rec.ops:
        return rec, False
    recorded = rec.ops[operation_id]
    if not _same_operation(recorded, done, lines):
        raise _reused(operation_id, recorded, done)
    return rec, True


_RELEASE_SETTLED = _OP_LINE  # the ops key (no id holds it) of a release, whole or not, that settled it FULFILLED


def _settled_by(rec: Reservation, done: State) -> bool:
    """Whether a ``done`` (a release or a fulfilment) settled ``rec``. A release leaves a partly shipped
    reservation FULFILLED (``_settle``) and marks it: a whole release then is its retry (R5), and a whole
    fulfilment a second, conflicting resolution (R3), refused as a release is after a fulfilment settled it."""
    if rec.state == State.FULFILLED:
        return (_RELEASE_SETTLED in rec.ops) == (done == State.RELEASED)
    return rec.state == done


def _with_op(rec: Reservation, operation_id: str, done: State, lines: tuple[LineRequest, ...],
             limits: Limits) -> Reservation:
    new = rec.clone()
    if operation_id:
        # Only a partial operation counts against the bound: a whole one (no ``lines``) settles the
        # reservation, so its id adds one entry at most. Held against it, a whole release or
        # fulfilment sent with an id was refused past the bound, the very step the refusal names.
        if lines and len(new.ops) >= limits.max_ops_per_reservation:
            raise DomainError(
                f"operation_id: reservation already has {len(new.ops)} partial operations "
                f"(limit max_ops_per_reservation={limits.max_ops_per_reservation}); release or fulfil the rest whole",
                Reason.OPERATION_LIMIT_REACHED, ("operation_id",), {"limit": "max_ops_per_reservation"},
            )
        new.ops[operation_id] = _op_key(done, lines)
    return new


def _amounts(rec: Reservation, lines: tuple[LineRequest, ...], room: _Room, what: str) -> list[int]:
    """Units to move per reservation line: everything, or what ``lines`` asks, checked against ``room``."""
    if not lines:
        return [room(line) for line in rec.lines]
    # A position may stand in several records of one reservation: a plain line and a group line
    # whose units came from the same location, or two groups sharing a member. A request's lines are
    # summed per position (R1), so one request line is spread over all of them, first records first;
    # checked against their last record alone, units held there could not be released or fulfilled
    # in part, and a SHIPMENT naming the reservation left them committed for ever (R4).
    records: dict[tuple[str, str], list[int]] = {}
    for i, line in enumerate(rec.lines):
        records.setdefault((line.sku, line.location), []).append(i)
    amounts = [0] * len(rec.lines)
    for n, req in enumerate(lines):
        at = records.get((req.sku, req.location))
        if at is None:
            raise _not_a_line(rec, n, req)
        rooms = [room(rec.lines[i]) for i in at]
        if req.quantity > sum(rooms):
            refused = not any(rec.lines[i].granted for i in at)
            why = f" (the line was not granted: {Outcome(rec.lines[at[0]].outcome).name})" if refused else ""
            raise InvalidArgument(f"lines[{n}].quantity",
                                  f"{req.quantity} exceeds the {sum(rooms)} units {what}{why}")
        left = req.quantity
        for i, units in zip(at, rooms, strict=True):
            amounts[i], left = min(left, units), left - min(left, units)
    return amounts


def _not_a_line(rec: Reservation, n: int, req: LineRequest) -> InvalidArgument:
    """A request line naming no position of the reservation. One naming a group line it granted says
    where its units are: the Reserve answer shows the line under its group, while release and
    fulfilment work on the positions the group gave (its allocations)."""
    given = [f"{line.location} ({line.granted})" for line in rec.lines
             if line.group == req.location and line.sku == req.sku and line.granted]
    where = f"; group {req.location!r} gave its units at {', '.join(given)}: name those locations" if given else ""
    return InvalidArgument(f"lines[{n}]", f"{req.sku}@{req.location} is not a line of this reservation{where}")


class _Room(Protocol):
    def __call__(self, line: LineRecord, /) -> int: ...


def _settle(rec: Reservation, now: int) -> None:
    """A reservation with nothing outstanding is resolved: FULFILLED if anything shipped."""
    rec.updated_at = now
    if not any(line.outstanding for line in rec.lines):
        rec.state = State.FULFILLED if any(line.fulfilled for line in rec.lines) else State.RELEASED
        rec.expires_at = 0
