"""Orders spanning groups (``_orders``) after Redis lost acknowledged entries of some of their groups (R7: a
Redis Cluster node restarted from older data, a failover to a lagging replica) while the others kept theirs: what
the parts that remain say of the order, pure. The engine acts on it (``atp_service.engine.losses``).

- A part missing from a decided order (``lost_parts``): its hold is gone, so an order not yet confirmed cannot be
  confirmed whole; it is given up whole.
- A part of its own confirmed under an order recorded HELD (``confirmed_by_parts``): a part is confirmed only by
  the share of a CONFIRM its order's home recorded pending first (R3), so the order was confirmed, and its home lost the
  record of it — its caller was most likely told CONFIRMED. Its confirmation is recorded again (``RESTORED``) and
  carried through to every part, its held ones confirmed; it is never expired, nor given up for a part Redis
  lost (``restored``): its confirmed parts' units are a confirmed order's, committed until released or shipped
  (Q3). Expired, they were offered again while its caller ships them (oversold). An expiry never releases a
  confirmed part (``_orders.apply_share``: R3, only HELD -> EXPIRED).
- A part confirmed under an order recorded undecided, its Reserve pending (``decided_by_parts``): the home's group
  came back from before the order's decision, which its confirmation followed. Decided as a Reserve decides
  (``_orders.decide``) it would be refused — a confirmed part is not one that holds — and its held parts released,
  or, past its TTL, given up whole, its confirmed parts released too: the paid order's committed units offered again
  while its caller ships them. It is decided again from its parts instead (``decide``, ``decided_again``): CONFIRMED,
  its lines as its parts decided them, its confirmation recorded again (``RESTORED``) and carried through.
- A part missing from a CONFIRMED order (``lost_committed``): its units were committed for an order its caller was
  told CONFIRMED (Q3), and are committed nowhere — sold again while the caller ships them, and a Fulfil of the order
  moved nothing out of ``on_hand`` there (R4). The part is made again as the order's record holds it, its units not
  released committed again at its group whether or not they still fit (``part_again``, ``commit_again``): where they
  no longer do, the position shows oversold (Q5: counted, never hidden), as the service acknowledged it (R7).
- A part resolved 3/4 of the retention or longer before its order opened by its home's clock (half of it by its
  group's, for an order opened just now), where that order reserves it (``forgotten``): an earlier order's of that id,
  forgotten at its home, not evicted at its group yet (or back from older data). Reserved anew (``_order_anew.Anew``),
  as once evicted — replayed, RELEASED it refused the new order, FULFILLED it decided it CONFIRMED with nothing held.
- A part of other content than its order asks (``own_part``): the order's record Redis lost at its home, its id
  reserved again with other content (R5: refused, the order given up); or, the first no longer remembered, the id
  reserved again and decided, then the part's group back from data older than this order's part. The part is that
  first order's: a confirmed one proves nothing of this order (``decided_by_parts``, ``confirmed_by_parts``: it was
  never confirmed by its caller, and expires), and is not given up with it (``give_up_part``, Q3). One CONFIRMED
  long before this order opened is a copy of a part its order resolved before that order was forgotten (``stale``):
  committed for no order, it is released by the decided order's steps that meet it, never kept committed for good.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from . import _operations as ops
from . import _orders as orders
from ._errors import DomainError
from ._limits import Limits
from ._model import (
    TERMINAL,
    LineRecord,
    OrderStep,
    Outcome,
    PendingOp,
    Reservation,
    ReserveCommand,
    State,
)
from ._operations import View
from ._order_anew import forgotten
from ._orders import PART_MARK, PART_TTL_MS, Place

if TYPE_CHECKING:
    from ._ledger import Ledger

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
    # Another order's part under the id (``others``) is there, not forgotten: lost whatever the order's age.
    holding = _holding(order, place)
    foreign = {group for group in others(order, found, place, limits) if holding.get(group, 0) > 0}
    released = set(released_unrecorded(order, found, place)) | foreign
    if now - order.created_at >= limits.retention_ms // 2:
        return sorted(released)
    granted = {place(line.sku) for line in order.lines if line.granted}
    return sorted({group for group in order.parts if group in granted and group not in found} | released)


def others(order: Reservation, found: Mapping[int, Reservation], place: Place, limits: Limits) -> list[int]:
    """The groups where ``found`` holds a part of other content than ``order`` asks there (not ``own_part``): another
    order's of that id — the first no longer remembered, the part's group back from data older than this order's part
    (R7). This order's part there is gone, its hold with it where its record holds units there (``lost_parts``); the
    other is never confirmed, fulfilled nor released on its behalf (``shares_for``), nor read as its lines."""
    asked = orders.split(orders.command_of(order), place)
    return [group for group, part in found.items() if not _own(order, part, asked.get(group), limits)]


def _own(order: Reservation, part: Reservation, cmd: ReserveCommand | None, limits: Limits) -> bool:
    """Whether ``part`` is ``order``'s own part ``cmd`` reserves (``own_part``) — not one of the same content resolved
    3/4 of the retention or longer before ``order`` opened: an earlier order's of that id, its group back from older
    data (R7), forgotten at the home a retention after it, so over R - 2g older than the order by the home's clock
    (each clock's lead under the hosts' gap g, the home's fallen back too); an own part, resolved after the order
    opened or (the order opened again, its home's record lost) replayed by its Reserve step under R/2 before by its
    group's clock (``_order_anew.forgotten_now``), under R/2 + g: apart while g < R/8 (``forgotten``: the same)."""
    if cmd is None or not own_part(part, cmd):
        return False
    return part.state not in TERMINAL or order.created_at - part.updated_at < limits.retention_ms * 3 // 4


def own_parts(order: Reservation, found: Mapping[int, Reservation], place: Place,
              limits: Limits) -> dict[int, Reservation]:
    """``found`` less another order's parts (``others``): what the order's lines are read and recorded from
    (``_orders.view``, ``_orders.settled``), its record's lines shown where its part is gone, never the other's."""
    foreign = others(order, found, place, limits)
    return {group: part for group, part in found.items() if group not in foreign}


def stale(order: Reservation, part: Reservation, limits: Limits) -> bool:
    """Whether ``part``, another order's of the decided ``order``'s id (``others``), is CONFIRMED and was last changed
    half the retention or longer before ``order`` opened (the other half: the clocks' margin ``lost_parts`` assumes): a
    copy, back from older data (R7), of a part its order resolved before that order was forgotten (R3: an order is
    resolved after its parts; R5: only a resolved one is forgotten, past its retention) — for ``order`` was decided a
    part at that group after, which no live part of another order allows (R5). Its units are committed for no order
    (Q3): released, never kept committed for good with nothing to release or ship them."""
    return part.state == State.CONFIRMED and order.created_at - part.updated_at >= limits.retention_ms // 2


def release_as_read(part: Reservation) -> PendingOp:
    """The share releasing ``part`` whole, another order's ``stale`` confirmed part, only while it is there as read
    (``_orders.AS_READ``): a share sent by the part's id alone may land after the order's own part was made over it
    (``commit_again``: with leases, the home's next owner carries the change through while its previous owner's saga
    goes on with what it read; a step in doubt lands late) — released, that confirmed order's units (Q3)."""
    return PendingOp(OrderStep.RELEASE, (), f"{orders.AS_READ}{part.created_at}:{part.updated_at}")


def shares_for(order: Reservation, shares: Mapping[int, PendingOp], found: Mapping[int, Reservation],
               place: Place, limits: Limits) -> dict[int, PendingOp]:
    """``shares`` of ``order``'s change to the parts read (``found``), less those to another order's part
    (``others``): never confirmed, fulfilled or released on its behalf (a confirmed one's units are a confirmed
    order's, Q3) — but one that only holds is given back by any share, expired (only while it still holds: never a
    part confirmed meanwhile, Q3), as giving the order up does (``give_up_part``): its hold is no order's now, and
    where the order holds nothing there (released by line before the part came back) no other step would ever give
    it back (R2); and a ``stale`` confirmed one is released whole, as read (``release_as_read``: its units committed
    for no order). None to a group not in ``found``: no part there (nothing to change), or its group did not answer
    the read — whose part it holds is not known, and a share goes by the part's id alone."""
    foreign = {group: found[group] for group in others(order, found, place, limits)}
    given = {group: PendingOp(OrderStep.EXPIRE) if part.state == State.HELD else release_as_read(part)
             for group, part in foreign.items() if part.state == State.HELD or stale(order, part, limits)}
    return {group: given[group] if group in foreign else share for group, share in shares.items()
            if group in found and (group not in foreign or group in given)}


def released_unrecorded(order: Reservation, found: Mapping[int, Reservation], place: Place) -> list[int]:
    """The groups whose part of the decided ``order`` gave up its units whole (RELEASED or EXPIRED) though the
    order's record shows units granted there and not released, by no change of the order (none of the part's
    operations unknown to the order: a partial release the home lost is the order's own), while another part still
    holds units: its hold there is gone as a lost part's is. A held part whose order's record Redis lost (an orphan,
    ``engine.orphans``) is given up by the sweep at the part's process; a retry of the order's Reserve at its home
    can open the order again meanwhile, decided HELD over the part just before it is released (R2: all or none)."""
    if not any(part.state in (State.HELD, State.CONFIRMED) for part in found.values()):
        return []  # every part resolved: resolved as they show it (``Orders._settled``)
    recorded = _holding(order, place)
    return [group for group, part in found.items() if part.state in (State.RELEASED, State.EXPIRED)
            and recorded.get(group, 0) > 0 and set(part.ops) <= set(order.ops)]


def _holding(order: Reservation, place: Place) -> dict[int, int]:
    """Each group's units the ``order``'s record shows granted there and not released."""
    recorded: dict[int, int] = {}
    for line in order.lines:
        group = place(line.sku)
        recorded[group] = recorded.get(group, 0) + line.granted - line.released
    return recorded


def lost_committed(order: Reservation, found: Mapping[int, Reservation], now: int, limits: Limits,
                   place: Place) -> list[int]:
    """The groups whose part of the CONFIRMED ``order`` (nothing pending) Redis lost whole (``lost_parts``, missing
    from ``found``): its units there were committed for a confirmed order (Q3) and are committed nowhere now."""
    if order.state != State.CONFIRMED or order.pending is not None:
        return []
    foreign = others(order, found, place, limits)  # its part there gone, another order's of that id found in its place
    return [group for group in lost_parts(order, found, now, limits, place) if group not in found or group in foreign]


def found_at_start(ledgers: Sequence[Ledger], now: Callable[[int], int], limits: Limits, place: Place) -> list[str]:
    """Orders of ``ledgers`` (every group's, by group: one process, after a restart) recorded CONFIRMED with nothing
    pending that are to be driven on (``Orders._settled``): those whose parts show nothing outstanding (SHIPMENT facts
    fulfilled every part, and the service stopped before it resolved the record: live for good else, R5), and those
    missing a part Redis lost (``lost_committed``, ``now`` the time at a group): its units committed nowhere, offered
    again while the caller ships them until a read, change or shipment drove the order on (Q3). One pass over the
    records the restart rebuilt, nothing read from Redis."""
    found = []
    for ledger in ledgers:
        for rid, rec in ledger.reservations.items():
            if rec.is_order and rec.pending is None and rec.state == State.CONFIRMED:
                parts = {g: p for g in rec.parts if (p := ledgers[g].reservation(orders.part_id(rid, g))) is not None}
                if orders.view(rec, parts).state in (State.FULFILLED, State.RELEASED) or \
                        lost_committed(rec, parts, now(ledger.shard), limits, place):
                    found.append(rid)
    return found


def part_again(order: Reservation, group: int, place: Place, now: int) -> Reservation:
    """The CONFIRMED ``order``'s part at ``group`` (``lost_committed``) as the order's record holds it: its lines as
    the part decided them, each one's units granted and not released committed (Q3), CONFIRMED, never expiring; the
    order's operations known to it, so that a share of one of them sent again is a replay (R5)."""
    lines = tuple(msgspec.structs.replace(line, held=0, committed=max(0, line.granted - line.released), fulfilled=0)
                  for line in order.lines if place(line.sku) == group)
    known = {op: key for op, key in order.ops.items() if not op.startswith(PART_MARK)}
    return Reservation(orders.part_id(order.reservation_id, group), order.order_ref, order.channel, PART_TTL_MS,
                       order.allow_partial, State.CONFIRMED, lines, order.created_at, 0, now, ops=known,
                       ttl_default=order.ttl_default)


def refused_again(order: Reservation, parts: Mapping[int, Reservation], place: Place,
                  group_names: Container[str], limits: Limits, answered: bool = False) -> dict[int, ReserveCommand]:
    """The shares (group -> its part's Reserve) of the undecided ``order`` decided by its parts (``decided_by_parts``)
    whose part, lost at its group with the order's decision (R7) and reserved again, was refused (its units no longer
    fit: REJECTED; its group full: missing). An order decided all or none (not ``allow_partial``) was decided HELD
    whole before a part of it was confirmed (R2, R3), so that part held every line, its units now a confirmed
    order's (Q3): committed again (``part_committed``), never left refused with its units committed nowhere. Not a
    part naming a location group (``group_names``): the member locations its lost decision picked are not known."""
    if order.allow_partial or not decided_by_parts(order, parts, place, limits, answered):
        return {}
    return {group: cmd for group, cmd in orders.split(orders.command_of(order), place).items()
            if (group not in parts or parts[group].state == State.REJECTED)
            and not any(line.location in group_names for line in cmd.lines)}


def part_committed(cmd: ReserveCommand, now: int) -> Reservation:
    """The part ``cmd`` reserves (``refused_again``), every line granted whole and committed (Q3), CONFIRMED: as it
    stood once its order's confirmation reached it (``commit_again`` saves it over its refusal)."""
    lines = tuple(LineRecord(line.sku, line.location, line.quantity, line.quantity, Outcome.GRANTED, 0,
                             committed=line.quantity) for line in cmd.lines)
    return Reservation(cmd.reservation_id, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial,
                       State.CONFIRMED, lines, now, 0, now, ttl_default=cmd.ttl_default)


def commit_again(view_: View, part: Reservation, limits: Limits) -> Reservation:
    """On the part's shard: ``part`` (``part_again``, ``part_committed``) saved and its units committed again (Q3) —
    where they no longer fit, the position is oversold, shown (Q5). A part of that id already there is answered as it
    stands (a replay) — but one refused (REJECTED, holding nothing) is the lost part reserved again (``refused_again``):
    saved over; and one of other content (``others``), another order's of that id, is saved over too, its held units
    released (no order's now, R2), unless CONFIRMED: a confirmed order's units, kept committed (Q3), answered as is —
    but a ``stale`` one's are committed for no order: released, saved over."""
    found = view_.reservation(part.reservation_id)
    if found is not None and found.state != State.REJECTED:
        if _own(part, found, orders.command_of(part), limits) or (  # opened as its order
                found.state == State.CONFIRMED and not stale(part, found, limits)):
            return found
        for line in found.lines:  # HELD, ``stale`` CONFIRMED, or resolved (holding nothing)
            if line.held or line.committed:
                view_.move_hold(line.sku, line.location, -line.held, -line.committed)
    for line in part.lines:
        if line.committed:
            view_.move_hold(line.sku, line.location, 0, line.committed)
    view_.save(part)
    return part


def was_confirmed(order: Reservation, part: Reservation, limits: Limits, answered: bool = False) -> bool:
    """Whether ``part`` was confirmed (CONFIRMED, or FULFILLED: only committed units are fulfilled, R4) by a CONFIRM
    ``order``'s home recorded (R3): never an earlier order's (``forgotten``, by the home's clock: any part its group
    replayed as the order's own as it opened is not; kept where its group refused it anew) — ``answered``, as the
    order's Reserve step answered it, it was replayed as the order's own there (R5)."""
    proof = part.state in (State.CONFIRMED, State.FULFILLED)
    return proof and (answered or not forgotten(part, order.created_at, limits))


def confirmed_by_parts(order: Reservation, parts: Mapping[int, Reservation], place: Place, limits: Limits) -> bool:
    """Whether ``order`` is HELD with nothing pending though a part of its own was confirmed (``own_confirmed``):
    Redis lost its confirmation at its home (R7: the home's group back from older data, the part's kept its own).
    One confirmed of other content leaves it HELD, to expire as its caller never confirmed it (R3)."""
    return order.state == State.HELD and order.pending is None and own_confirmed(order, parts, place, limits)


def own_confirmed(order: Reservation, parts: Mapping[int, Reservation], place: Place, limits: Limits) -> bool:
    """Whether a part of ``parts`` of the order's own content (``own_part``) was confirmed (``was_confirmed``). One
    of other content under its id is another order's of that id (R5: one no longer remembered, its part there back
    from older data over this one's): its confirmation proves nothing of this order, never committing its units."""
    asked = orders.split(orders.command_of(order), place)
    return any(was_confirmed(order, p, limits) and _own(order, p, asked.get(g), limits) for g, p in parts.items())


def confirmed_again(order: Reservation, now: int) -> Reservation:
    """``order`` (``confirmed_by_parts``) with its confirmation recorded again, pending (``RESTORED``): carried
    through to every part as a pending CONFIRM is (its held parts confirmed), never expired (R3, Q3)."""
    return msgspec.structs.replace(order, state=State.CONFIRMED, expires_at=0, updated_at=now, pending=RESTORED)


def restored(order: Reservation) -> bool:
    """Whether ``order``'s pending change is its confirmation recorded again (``confirmed_again``): carried through
    whatever part Redis lost (``lost_parts``), never given up — its caller was most likely told CONFIRMED and its
    confirmed parts' units are committed (Q3). A lost part's units are committed again (``lost_committed``)."""
    return order.pending == RESTORED


def confirmation_applied(order: Reservation, parts: Mapping[int, Reservation], place: Place, limits: Limits) -> bool:
    """Whether ``order``'s confirmation, recorded pending at its home, confirmed a part of its own (``was_confirmed``,
    ``own_part``): carried through whatever part Redis lost, as one confirmed again is (``restored``). Its caller may
    have been told CONFIRMED (its home back from older data to the pending record, the settled one lost, R7); its
    confirmed parts' units are committed (Q3), a lost part's committed again (``lost_committed``), never released."""
    if order.pending is None or order.pending.kind != OrderStep.CONFIRM:
        return False
    return own_confirmed(order, parts, place, limits)


def decided_by_parts(order: Reservation, parts: Mapping[int, Reservation], place: Place, limits: Limits,
                     answered: bool = False) -> bool:
    """Whether ``order`` is undecided (its Reserve pending) though a part was confirmed (``was_confirmed``, ``parts``
    as its Reserve steps ``answered`` them or as read): a part is confirmed only once its order was decided HELD and
    its home recorded that (R3), so Redis lost both at its home (R7: the home's group back from before the decision).
    Not where a part holds other content than the order asks there (``_orders.same_part``): that id's order whose
    record Redis lost, opened again with other content — a retry refused (R5), its part proving nothing of this one."""
    if order.pending is None or order.pending.kind != OrderStep.RESERVE or \
            not any(was_confirmed(order, part, limits, answered) for part in parts.values()):
        return False
    asked = orders.split(orders.command_of(order), place)
    return all(_own(order, part, asked.get(group), limits) for group, part in parts.items())


def own_part(part: Reservation, cmd: ReserveCommand) -> bool:
    """Whether ``part`` is what ``cmd`` (its order's share, ``_orders.split``) reserves: not a part of another order
    of that id — one whose record Redis lost, the id opened again with other content (R5)."""
    try:
        ops.same_content(part, cmd)
    except DomainError:
        return False
    return True


def give_up_part(view_: View, cmd: ReserveCommand, now: int, limits: Limits) -> Reservation:
    """``_orders.give_up_part`` — but a confirmed part is kept, its committed units committed until a SHIPMENT naming
    the order fulfils them, as an orphaned confirmed part's are (Q3). One of other content (not ``own_part``) is
    another order's of that id, whose record Redis lost, its caller told CONFIRMED: not this order's to give up (R5).
    One of its own proves its order was confirmed, its home having lost that: given up undecided without reading it
    (its group silent past its TTL and the bound, ``order_expiry.undecided_parts``), the order is EXPIRED at its home
    and the part reached once its group answers — released, the paid order's units were offered again (R3, R8)."""
    part = view_.reservation(cmd.reservation_id)
    if part is not None and part.state == State.CONFIRMED:
        return part
    return orders.give_up_part(view_, cmd, now, limits)


GAVE_UP_DECIDED = PART_MARK + "torn"
"""The ops key of an order given up whole once decided (``abandoned``): a part of it Redis lost (``lost_parts``), the
order HELD or its confirmation pending at its home. A part of its own confirmed when read keeps it from being given up
(``confirmed_by_parts``, ``confirmation_applied``); one found confirmed when its parts are given up was confirmed after
that read, by another saga of the order — the home's previous owner's (leases), going on with the shares of the
confirmation it recorded pending before the home was handed over, never to record it settled there nor tell its caller
CONFIRMED. Given up with the order (R2): released (``releases_confirmed``), never left committed for an EXPIRED order,
its units sold to nobody for good (Q3). ``tests/atp_service/app/test_lease_gave_up_decided.py``."""


def abandoned(order: Reservation, now: int, refusal: DomainError | None = None) -> Reservation:
    """``_orders.abandoned``, marked ``GAVE_UP_DECIDED`` where ``order`` was decided (its Reserve not pending)."""
    expired = orders.abandoned(order, now, refusal)
    if order.pending is not None and order.pending.kind == OrderStep.RESERVE:
        return expired
    return msgspec.structs.replace(expired, ops=expired.ops | {GAVE_UP_DECIDED: ""})


def releases_confirmed(order: Reservation) -> bool:
    """Whether the abandoned ``order``'s own confirmed parts are released with it (``GAVE_UP_DECIDED``); else, given
    up undecided, a confirmed part proves a confirmation its home lost, and is kept (``give_up_part``)."""
    return GAVE_UP_DECIDED in order.ops


def decided_again(order: Reservation, parts: Mapping[int, Reservation], now: int) -> Reservation:
    """``order`` (``decided_by_parts``) decided again from ``parts``: CONFIRMED, never expiring, its lines as the
    parts decided them (what it granted, committed at each part; a part Redis lost too, missing from ``parts``: not
    attempted, its units committed nowhere), its confirmation recorded pending (``RESTORED``): carried through to
    every part as ``confirmed_again``'s is (its held parts confirmed), never expired nor given up (R3, Q3). A retry
    of its Reserve then answers the order as it stands, CONFIRMED, as it would have before the loss (R5)."""
    lines = orders.settled(order, now, parts).lines
    return msgspec.structs.replace(order, state=State.CONFIRMED, lines=lines, expires_at=0, updated_at=now,
                                   pending=RESTORED)


def decide(order: Reservation, parts: Mapping[int, Reservation], now: int, place: Place, limits: Limits,
           answered: bool = False) -> tuple[Reservation | None, list[int]]:
    """``_orders.decide`` of the undecided ``order`` — but where a part was confirmed (``decided_by_parts``), its
    decision again from its parts (``decided_again``): never refused, its held parts never released (R3, Q3)."""
    if decided_by_parts(order, parts, place, limits, answered):
        return decided_again(order, parts, now), []
    return orders.decide(order, parts, now)
