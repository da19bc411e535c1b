"""Orders whose lines span groups that no one script can change at once (R2 across groups).

An order is split into *parts*, one per group: each part is an ordinary reservation of that group's lines,
decided by that group alone (all-or-nothing within it), except that a part never expires by itself. The order's
own record lives on its home group: it holds no units, only the decisions — what was asked, the groups of its
parts, its state and TTL, what its changes released, and the change it has decided and not yet seen every part
apply (``pending``). Every function here is pure: it says what to do; the engine does it, durably, step by step,
and does it again after a crash (every step is idempotent: a part's id and a change's operation id make a repeat
a replay).

- Reserve: the order is recorded first (``open_order``, pending RESERVE), then each part is reserved; ``decide``
  turns the parts' outcomes into the order's: held when every part holds (or, with ``allow_partial``, when any
  does), else the parts that hold are released first and the order is rejected. A competing order may meanwhile
  be refused because of a part's hold that is then released — never the reverse. (One a part of which was
  confirmed was decided before its home lost that: decided again, confirmed, ``_order_losses.decide``.)
- Confirm, release, fulfil and expiry: ``plan`` decides the change on the order as the parts show it (``view``),
  with the single-group rules (``_operations``), and names each part's share; the order is saved with the change
  pending, the parts apply their shares (``apply_share``), and the order is saved settled. An order past its TTL
  expires this way too; one whose confirmation is pending is never expired (the confirmation is finished instead),
  nor one a part of which was confirmed (its home lost the confirmation: ``_order_losses``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Mapping

import msgspec

from . import _operations as ops
from ._errors import GIVEN_UP, DomainError, Reason, ResourceExhausted
from ._limits import Limits
from ._model import (
    Fact,
    FactOutcome,
    LineRecord,
    LineRequest,
    OrderStep,
    Outcome,
    PendingOp,
    Quantities,
    Reservation,
    ReserveCommand,
    State,
)
from ._operations import View

PART_MARK = "\x1f"
"""Between an order's id and a part's group: a control character, so no caller's id (printable only, ``check_id``)
can name a part."""
REFUSED = PART_MARK + "refused"
"""The ops key (no operation id holds a control character) of an order given up because a part was refused by a
rule — its group past its bound on records (CAPACITY_REACHED), its id taken by other content (RESERVATION_ID_REUSED)
—: the refusal's reason, fields, metadata and message (JSON), replayed to a retry (``replayed``)."""
CAPACITY_REFUSED = PART_MARK + "capacity"
"""The ops key an order refused CAPACITY_REACHED was recorded with before ``REFUSED`` (its ``limit`` and message):
still read, never written."""
_KINDS: dict[Reason, type[DomainError]] = {Reason.CAPACITY_REACHED: ResourceExhausted}
"""The class a replayed refusal is raised as (``DomainError`` else: told by its reason, ``edge.errors.STATUS``)."""
PART_TTL_MS = 10**15
"""A part's TTL: it never expires by itself (its order's expiry expires it)."""
AS_READ = PART_MARK + "as-read:"
"""The operation id of a whole Release of the part as a read found it (``_order_losses.release_as_read``): followed
by the part's ``created_at`` and ``updated_at``; a part of that id changed or made since is not released."""

Place = Callable[[str], int]


def part_id(order_id: str, group: int) -> str:
    return f"{order_id}{PART_MARK}{group}"


def order_of(reservation_id: str) -> str | None:
    """The order a part belongs to (None: not a part)."""
    order, mark, _ = reservation_id.rpartition(PART_MARK)
    return order if mark else None


def split(cmd: ReserveCommand, place: Place) -> dict[int, ReserveCommand]:
    """Each group's lines as a Reserve of its own, in the order's line order, never expiring."""
    lines: dict[int, list[LineRequest]] = {}
    for line in cmd.lines:
        lines.setdefault(place(line.sku), []).append(line)
    return {group: ReserveCommand(part_id(cmd.reservation_id, group), cmd.order_ref, cmd.channel, tuple(mine),
                                  PART_TTL_MS, cmd.allow_partial)
            for group, mine in sorted(lines.items())}


def open_order(cmd: ReserveCommand, groups: tuple[int, ...], now: int) -> Reservation:
    """The order's record while its parts are decided: what was asked, nothing held yet."""
    lines = tuple(LineRecord(line.sku, line.location, line.quantity, 0, Outcome.NOT_ATTEMPTED, 0)
                  for line in cmd.lines)
    return Reservation(cmd.reservation_id, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial, State.HELD,
                       lines, now, now + cmd.ttl_ms, now, parts=groups, pending=PendingOp(OrderStep.RESERVE),
                       ttl_default=cmd.ttl_default)


def same_order(order: Reservation, cmd: ReserveCommand) -> None:
    """R5: a retry of the order with other content is refused, naming the field."""
    ops.same_content(order, cmd)


def command_of(order: Reservation) -> ReserveCommand:
    """The Reserve an order was opened with (its requested lines are kept until it is decided), or a part's."""
    return ReserveCommand(order.reservation_id, order.order_ref, order.channel, ops.requested_lines(order),
                          order.ttl_ms, order.allow_partial, order.ttl_default)


def decide(order: Reservation, parts: Mapping[int, Reservation], now: int) -> tuple[Reservation | None, list[int]]:
    """The order once every part is decided: (the order, []) — or (None, the groups whose parts
    hold units and must be released first: the order is refused, all or nothing)."""
    assert set(parts) == set(order.parts), "every part is decided before the order"
    held = [g for g in order.parts if parts[g].state == State.HELD]
    if order.allow_partial or len(held) == len(order.parts):
        state = State.HELD if held else State.REJECTED
        lines = _merged(order, parts)
    else:
        if held:
            return None, held
        state = State.REJECTED
        lines = tuple(record for line, records in _by_line(order, parts) for record in _refused(line, records))
    decided = msgspec.structs.replace(order, state=state, lines=_unheld(lines), updated_at=now, pending=None,
                                      expires_at=order.expires_at if state == State.HELD else 0)
    return decided, []


def view(order: Reservation, parts: Mapping[int, Reservation], nowhere: Container[str] = ()) -> Reservation:
    """The order as its callers see it: its decisions, with the parts' lines (what is held, committed, fulfilled and
    released at each position now). A rejected order keeps its own; a part resolved and forgotten after its retention
    (missing from ``parts``) shows the order's record of its lines: nothing outstanding, and while the order is
    confirmed what it granted and did not release as shipped (only SHIPMENT facts resolve a part alone; R5) — but
    the lines of the SKUs ``nowhere``, whose part is not forgotten but gone, another order's in its place
    (``_order_losses.others``): committed, nothing shipped (Q3, R4), their units committed nowhere."""
    if order.state == State.REJECTED or (order.pending is not None and order.pending.kind == OrderStep.RESERVE):
        return order
    merged = msgspec.structs.replace(order, lines=_merged(order, parts, nowhere))
    if merged.state in (State.HELD, State.CONFIRMED) and not any(line.outstanding for line in merged.lines):
        fulfilled = any(line.fulfilled for line in merged.lines)  # by SHIPMENT facts on the parts
        merged.state = State.FULFILLED if fulfilled else State.RELEASED
        merged.expires_at = 0
    return merged


Share = PendingOp
"""A part's share of an order's change: its kind, and the part's lines of it (none: whole)."""


def plan(current: Reservation, step: PendingOp, now: int, limits: Limits, place: Place
         ) -> tuple[Reservation | None, dict[int, Share], DomainError | None]:
    """``step`` decided on ``current`` (``view``) by the single-group rules: (the order after it,
    each part's share, the refusal to answer). A refusal may still come with a change — an order
    past its TTL expires on the way (R3) — and a retry that changes nothing plans no share."""
    paper = _Paper(current)
    error: DomainError | None = None
    try:
        if step.kind == OrderStep.CONFIRM:
            ops.confirm(paper, current.reservation_id, now)
        elif step.kind == OrderStep.RELEASE:
            ops.release(paper, current.reservation_id, step.lines, step.operation_id, now, limits)
        elif step.kind == OrderStep.FULFIL:
            ops.fulfill(paper, current.reservation_id, step.lines, step.operation_id, now, limits)
        elif step.kind == OrderStep.EXPIRE:
            ops.expire(paper, current.reservation_id, now)
        else:
            raise ValueError(f"not a change of a decided order: {step!r}")
    except DomainError as exc:
        error = exc
    if paper.saved is None:
        return None, {}, error
    done = paper.saved
    # Only an expiry stands beside a refusal; and an order past its TTL that the step expired on the
    # way (R3) expires whatever the step, a retry answered without an error included (R5): its parts
    # must give up their units, where the step itself would change nothing.
    expired_on_the_way = done.state == State.EXPIRED and current.state != State.EXPIRED
    applied = step if error is None and not expired_on_the_way else PendingOp(OrderStep.EXPIRE)
    recorded = msgspec.structs.replace(done, pending=applied, lines=_unheld(done.lines))
    return recorded, shares(current, applied, place), error


def settled(order: Reservation, now: int, parts: Mapping[int, Reservation] | None = None) -> Reservation:
    """The order once every part has applied its pending change; with ``parts`` (read after), what they released
    recorded as they did it (a SHIPMENT fact may have overtaken a share: ``_partial_share``)."""
    lines = order.lines if parts is None else _unheld(_merged(order, parts))
    return msgspec.structs.replace(order, pending=None, updated_at=now, lines=lines)


def resolved(order: Reservation, shown: Reservation, now: int) -> Reservation:
    """The order once its parts are all resolved without a change of its own (SHIPMENT facts on
    the parts): resolved as ``view`` shows it."""
    return msgspec.structs.replace(order, state=shown.state, lines=_unheld(shown.lines), expires_at=0,
                                   updated_at=now)


def abandoned(order: Reservation, now: int, refusal: DomainError | None = None) -> Reservation:
    """An order still undecided when its TTL passed, or given up because a part was refused (``refusal``;
    its parts that held units are released): expired, nothing granted. The refusal is recorded, marked ``GIVEN_UP``
    (no retry of the id can help), so that a retry of the id answers it (``replayed``, R5)."""
    lines = tuple(LineRecord(line.sku, line.location, line.requested, 0, Outcome.NOT_ATTEMPTED, 0, group=line.group)
                  for line in order.lines)  # a group line's records keep their group: a retry names it (R5)
    recorded = dict(order.ops)
    if refusal is not None:
        metadata = {str(k): str(v) for k, v in refusal.metadata.items()} | {GIVEN_UP: "true"}  # read back as strings
        recorded[REFUSED] = msgspec.json.encode(
            (refusal.reason.name, [str(f) for f in refusal.fields], metadata, refusal.message)).decode()
    return msgspec.structs.replace(order, state=State.EXPIRED, lines=lines, expires_at=0, updated_at=now,
                                   pending=PendingOp(OrderStep.EXPIRE), ops=recorded)


def replayed(order: Reservation, parts: Mapping[int, Reservation], nowhere: Container[str] = ()) -> Reservation:
    """A decided order as a retry of its Reserve answers it (R5): the refusal it was given up for,
    where recorded (``abandoned``) — answered EXPIRED, a success, the caller whose first answer was lost
    heard neither that it was refused nor why — else as its parts show it (``view``)."""
    if kept := order.ops.get(REFUSED):
        raise refused_again(kept)
    limit, mark, message = order.ops.get(CAPACITY_REFUSED, "").partition(PART_MARK)
    if mark:
        raise ResourceExhausted(message, Reason.CAPACITY_REACHED, metadata=({"limit": limit} if limit else {}) | {
            GIVEN_UP: "true"})
    return view(order, parts, nowhere)


def refused_again(kept: str) -> DomainError:
    """The refusal an order was given up for, as ``abandoned`` recorded it: the same reason, fields,
    metadata and message."""
    name, fields, metadata, message = msgspec.json.decode(kept, type=tuple[str, tuple[str, ...], dict[str, str], str])
    reason = Reason[name]
    return _KINDS.get(reason, DomainError)(message, reason, fields, metadata)


def give_up_part(view_: View, cmd: ReserveCommand, now: int, limits: Limits) -> Reservation:
    """A part of an order abandoned undecided (``abandoned``), on the part's shard: released if it
    holds units; never reserved, a tombstone takes its place — expired, nothing held, with the
    part's content — so that a step reserving it that arrives late (its answer had been lost) replays
    the tombstone (R5) instead of holding units that nobody would ever release (parts never expire
    by themselves). Forgotten after the retention, like any resolved reservation."""
    part = view_.reservation(cmd.reservation_id)
    if part is not None:
        return apply_share(view_, cmd.reservation_id, PendingOp(OrderStep.RELEASE), now, limits) or part
    lines = tuple(LineRecord(line.sku, line.location, line.quantity, 0, Outcome.NOT_ATTEMPTED, 0) for line in cmd.lines)
    tombstone = Reservation(cmd.reservation_id, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial,
                            State.EXPIRED, lines, now, 0, now, ttl_default=cmd.ttl_default)
    view_.save(tombstone)
    return tombstone


def apply_share(view_: View, reservation_id: str, share: Share, now: int, limits: Limits) -> Reservation | None:
    """A part's share of its order's change, on the part's shard; a repeat changes nothing."""
    part = view_.reservation(reservation_id)
    if part is None:
        return None
    whole = not share.lines
    if share.kind == OrderStep.CONFIRM:
        return ops.confirm(view_, reservation_id, now) if part.state == State.HELD else part
    if share.kind in (OrderStep.RELEASE, OrderStep.EXPIRE) and whole:
        # R3: only HELD -> EXPIRED; Q3: committed units never expire. A part confirmed under an order expiring
        # (its record taken back to HELD by Redis losing its home's entries, R7: ``_order_losses``) is kept.
        if share.kind == OrderStep.EXPIRE:
            # Expired, not released: its units go back, none counted released (R3), as the order shows them
            # like a one-group reservation's (released, an expired order's lines showed them so on a cluster).
            return ops.expire_held(view_, part, now) if part.state == State.HELD else part
        busy = part.state in (State.HELD, State.CONFIRMED)
        if share.operation_id.startswith(AS_READ):  # only the part it was judged on, never one made over it since
            busy = busy and share.operation_id == f"{AS_READ}{part.created_at}:{part.updated_at}"
        return ops.release(view_, reservation_id, (), "", now, limits) if busy else part
    if share.kind in (OrderStep.RELEASE, OrderStep.FULFIL) and not whole:
        return _partial_share(view_, part, share, now, limits)
    if share.kind == OrderStep.FULFIL:
        if part.state != State.CONFIRMED:
            return part  # fulfilled already (a repeat), or by SHIPMENT facts
        # No operation id: the part's state makes a repeat a replay, and its own count (higher by its
        # SHIPMENT facts') must not refuse what the order recorded (OPERATION_LIMIT_REACHED, R3).
        return ops.fulfill(view_, reservation_id, (), "", now, limits)
    raise ValueError(f"not a part's share: {share!r}")


def _partial_share(view_: View, part: Reservation, share: Share, now: int, limits: Limits) -> Reservation:
    """A part's share of a partial Release/Fulfil its order has recorded: carried through, never
    refused (R3) — a refusal here leaves the order pending for good, every later change, read and
    expiry of it refused the same way, its parts' units held for good. The order's own count of
    operations was checked (``plan``); the part's is higher by its SHIPMENT facts' own, so it is not
    held against the share. Units a SHIPMENT fact took from the part since the order read it (at
    another process, outside the order's lock) are not asked again: what is left is moved."""
    if share.operation_id in part.ops:
        return part  # a repeat (R5)
    fulfil = share.kind == OrderStep.FULFIL
    if part.state not in ((State.CONFIRMED,) if fulfil else (State.HELD, State.CONFIRMED)):
        return part  # resolved meanwhile by SHIPMENT facts: nothing of it is left to move
    room = ops.per_position(part.lines, lambda line: line.committed if fulfil else line.outstanding)
    lines = tuple(LineRequest(line.sku, line.location, fitting) for line in share.lines
                  if (fitting := min(line.quantity, room.get((line.sku, line.location), 0))) > 0)
    if not lines:
        return part
    unbounded = dataclasses.replace(limits, max_ops_per_reservation=len(part.ops) + 1)
    move = ops.fulfill if fulfil else ops.release
    return move(view_, part.reservation_id, lines, share.operation_id, now, unbounded)


def shares(order: Reservation, step: PendingOp, place: Place) -> dict[int, Share]:
    """Each part's share of ``step``: all of it, or its lines of it (a line's SKU names its group)."""
    if not step.lines:
        return {group: PendingOp(step.kind, (), step.operation_id) for group in order.parts}
    mine: dict[int, list[LineRequest]] = {}
    for line in step.lines:
        mine.setdefault(place(line.sku), []).append(line)
    return {group: PendingOp(step.kind, tuple(lines), step.operation_id) for group, lines in mine.items()}


def _by_line(order: Reservation, parts: Mapping[int, Reservation],
             nowhere: Container[str] = ()) -> list[tuple[LineRequest, list[LineRecord]]]:
    """Each line the order asked for, with the parts' records of it (a group line may have several); ``view``."""
    records: dict[tuple[str, str], list[LineRecord]] = {}
    for group in order.parts:
        part = parts.get(group)
        for record in part.lines if part is not None else ():
            records.setdefault((record.sku, record.group or record.location), []).append(record)
    own: dict[tuple[str, str], list[LineRecord]] = {}  # a part resolved and forgotten: the order's record of it
    live = order.state == State.CONFIRMED  # its part forgotten: shipped (``view``); a held one's never committed
    for record in order.lines:
        left = max(0, record.granted - record.released)
        if live and record.sku in nowhere:  # its part gone, not forgotten: committed (nowhere held), nothing shipped
            record = msgspec.structs.replace(record, committed=left)
        elif live:
            record = msgspec.structs.replace(record, fulfilled=left)
        own.setdefault((record.sku, record.group or record.location), []).append(record)
    return [(line, records.get(key) or own.get(key, []))
            for line in ops.requested_lines(order) for key in [(line.sku, line.location)]]


def _merged(order: Reservation, parts: Mapping[int, Reservation], nowhere: Container[str] = ()
            ) -> tuple[LineRecord, ...]:
    """The parts' line records in the order's line order (a group line's records stay together)."""
    return tuple(record for _, records in _by_line(order, parts, nowhere) for record in records)


def _unheld(lines: tuple[LineRecord, ...]) -> tuple[LineRecord, ...]:
    """Lines as the order's record keeps them: the decisions and what its steps released (``_by_line``), no units
    its parts hold (``view`` shows those), so no position is counted twice."""
    return tuple(msgspec.structs.replace(line, held=0, committed=0, fulfilled=0) for line in lines)


def _refused(line: LineRequest, records: list[LineRecord]) -> list[LineRecord]:
    """A line of a refused order: as its part decided it, or — where its part granted it and was
    released because another part did not fit — not attempted, as one group would have said."""
    if not any(record.outcome == Outcome.GRANTED for record in records):
        return records
    group = records[0].group
    return [LineRecord(line.sku, line.location, line.quantity, 0, Outcome.NOT_ATTEMPTED,
                       sum(record.available for record in records), group=group)]


class _Paper:
    """A ``View`` of one order as its parts show it, where changes move no units (the parts hold
    them): the single-group rules decide, and what they save is the order after the change."""

    def __init__(self, order: Reservation) -> None:
        self._order = order
        self.saved: Reservation | None = None

    def quantities(self, sku: str, location: str) -> Quantities:
        raise AssertionError("a decided order's change reads no position")

    def reservation(self, reservation_id: str) -> Reservation | None:
        return (self.saved or self._order) if reservation_id == self._order.reservation_id else None

    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        pass  # the part moves its own units when it applies its share

    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None:
        pass

    def save(self, reservation: Reservation) -> None:
        self.saved = reservation

    def record_fact(self, fact: Fact) -> tuple[FactOutcome, str]:
        raise AssertionError("a decided order's change records no fact")
