"""Orders spanning groups after Redis lost acknowledged entries of some of their groups (a Redis Cluster node, or
the group's keys, back from older data) while the others kept theirs: what the saga (``orders.Orders``) does about
it, as the parts that remain tell it (``reservation._order_losses``), and what it says.

- A held order missing a part that held units (or one whose Confirm stopped half-way): its hold there is gone, so
  the order is given up whole (EXPIRED, ``order_part_lost``), never confirmed with those units committed nowhere
  (R2, Q3).
- An order recorded HELD at its home with a part confirmed is one whose confirmation its home recorded (R3) and
  Redis lost there: its confirmation is recorded again and carried through (``order_confirmation_restored``),
  never expired — nor given up for a part Redis lost (``order_part_lost`` says so): its committed units stay
  committed (Q3). Expired or given up, they were offered again while its caller, told CONFIRMED, ships them.
- A CONFIRMED order missing a part (its confirmation restored or not): the part is made again at its group, its units
  committed again (``commit_lost``, ``order_part_committed_again``) — committed nowhere, they were sold again while
  its caller ships them, and a Fulfil moved nothing out of ``on_hand`` there (Q3, R4).
- An order recorded undecided (its Reserve pending) with a part confirmed is one whose decision and confirmation its
  home recorded (R3) and Redis lost there: it is decided again from its parts, CONFIRMED, and carried through
  (``order_decision_restored``) — never refused (its held parts released), nor given up undecided past its TTL (its
  confirmed parts released too).
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Callable, Container, Hashable, Iterator, Mapping
from typing import TYPE_CHECKING

from atp_service.engine.parts import CommitPart, run_parts
from reservation import DomainError, InvalidArgument, Limits, LineRequest, OrderStep, PendingOp, Reservation, State
from reservation import _order_losses as losses
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

log = logging.getLogger(__name__)

GIVEN_UP = "its hold there is gone: the order is given up whole"
KEPT = ("a part of it is confirmed (its confirmation restored from that part where its home lost it, or recorded "
        "pending at its home and applied there, R3): carried through, never given up; the lost parts made again, "
        "their units committed (order_part_committed_again)")


def torn(order: Reservation, parts: Mapping[int, Reservation], now: int, limits: Limits,
         place: Callable[[str], int]) -> list[int]:
    """The groups whose part of ``order`` Redis lost (``lost_parts``), said, where the order is to be given up whole
    for them; none where it is whole, or where its confirmation was restored from its parts (``restored``)."""
    lost = losses.lost_parts(order, parts, now, limits, place)
    if not lost:
        return []
    # A confirmed order's (R3), or one whose confirmation confirmed a part: its committed units stay committed (Q3)
    kept = losses.restored(order) or losses.confirmation_applied(order, parts, place, limits)
    # A lost group whose part is there: released whole by no change of the order (``released_unrecorded``), or
    # another order's of that id in its place (``others``).
    others = losses.others(order, parts, place, limits)
    released = [group for group in lost if group in parts and group not in others]
    log_lost(order.reservation_id, lost, released, KEPT if kept else GIVEN_UP, others)
    return [] if kept else lost


NOWHERE_REMEMBERED = 10_000
"""Orders found with units committed nowhere (``commit_lost``) remembered, at most, the last found (``Told``): each is
counted and said once while remembered — found again at every read or change of it until settled, it was counted
each time, and a dashboard showed 50 for one order read 50 times. About 2 MB (1.8 MB with ids of 36 characters, 2.8 MB
at the longest, 128); one forgotten past it (that many others found since) is counted again when found again. The
orders committed nowhere now (``Nowhere``, ``atp_orders_committed_nowhere``) are held to the same bound: as much."""


REMADE, STALE = "order_part_committed_again", "order_part_stale_released"
"""The lines said once per order and groups (``Told``)."""


class Told:
    """Per key (a line's event and an order; an order), the last thing told of it (the last ``most`` keys): whether
    ``what`` is news for ``key`` (``news``), until the key is forgotten (``forget``); whether a key is seen for the
    first time while remembered (``first``). A line said as its step is sent is said once, not again as each read and
    pass sends that step again while it fails."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._told: collections.OrderedDict[Hashable, object] = collections.OrderedDict()

    def first(self, key: Hashable) -> bool:
        return self.news(key, True)

    def news(self, key: Hashable, what: object) -> bool:
        new = self._told.get(key) != what
        self._told[key] = what
        self._told.move_to_end(key)
        if len(self._told) > self._most:
            self._told.popitem(last=False)
        return new

    def forget(self, key: Hashable) -> None:
        self._told.pop(key, None)


class Nowhere:
    """The orders committed nowhere now (``commit_lost``: CONFIRMED, another order's confirmed part of its id kept in
    the place of its part at a group), held from being found so until found otherwise (its part made again over the
    other, gone meanwhile) or resolved (``gone``): what ``atp_orders_committed_nowhere`` counts of them, those whose
    home group this process serves (``Orders``), an alert firing while any is. Each counted in
    ``atp_order_sagas_total`` and said once while remembered (``counted``) — said again once found so again after it
    was not (``gone``): the line naming the order is the alert's way to it. Bounded: the last ``most`` found
    (``NOWHERE_REMEMBERED``), the oldest forgotten past it — the gauge shows that bound then, never more."""

    def __init__(self, most: int) -> None:
        self._most, self.counted = most, Told(most)
        self._now: collections.OrderedDict[str, None] = collections.OrderedDict()

    def found(self, order_id: str) -> bool:
        """``order_id`` committed nowhere now; whether it is counted (said) now: once while remembered."""
        self._now[order_id] = None
        self._now.move_to_end(order_id)
        if len(self._now) > self._most:
            self._now.popitem(last=False)
        return self.counted.first(order_id)

    def gone(self, order_id: str) -> None:
        self._now.pop(order_id, None)
        self.counted.forget(order_id)  # not handed over (``keep``): committed where its record says, or resolved

    def keep(self, here: Callable[[str], bool]) -> None:
        """Those not ``here`` forgotten (their home group handed over: its next owner finds them, counts them)."""
        for order_id in [order_id for order_id in self._now if not here(order_id)]:
            del self._now[order_id]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._now))


def as_shown(engine: Engine, order: Reservation, found: Mapping[int, Reservation]) -> Reservation:
    """``order`` as its callers see it from its parts read (``found``), another order's part in the place of its own
    never read as its lines (``own_parts``): its lines there committed, nothing shipped — its units committed nowhere
    (``commit_lost``, kept), never read as a part forgotten past its retention is, shipped; a Release then
    releasing the order showed it FULFILLED, those lines neither released nor shipped (R3, R4, Q3)."""
    return orders.view(order, *own_of(engine, order, found))


def own_of(engine: Engine, order: Reservation,
           found: Mapping[int, Reservation]) -> tuple[dict[int, Reservation], set[str]]:
    """``found`` less another order's parts (``_order_losses.own_parts``), and the SKUs of ``order``'s lines at the
    groups of those (``_orders.view``'s ``nowhere``): what its lines are read from (``as_shown``, a Reserve replayed,
    R5)."""
    mine = losses.own_parts(order, found, engine.place, engine.limits)
    return mine, {line.sku for line in order.lines if (group := engine.place(line.sku)) in found and group not in mine}


def planned(engine: Engine, order: Reservation, found: Mapping[int, Reservation], step: PendingOp, now: int
            ) -> tuple[Reservation | None, dict[int, PendingOp], DomainError | None]:
    """``_orders.plan`` of ``step`` on ``order`` as its callers see it (``as_shown``) — but a Fulfil of units of its
    lines committed nowhere (``own_of``) is refused (``nowhere_fulfil``), as a Fulfil of units not committed is: no
    part holds them to move (R4), so told done their units stay in ``on_hand`` there, offered again (Q1). An
    operation it recorded before is replayed (R5). Of the lines either refuses, the first is named (the lowest n,
    whichever check refuses it): a caller fixing its request line by line is pointed at them in order."""
    mine, nowhere = own_of(engine, order, found)
    shown = orders.view(order, mine, nowhere)
    done, shares, error = orders.plan(shown, step, now, engine.limits, engine.place)
    if step.kind == OrderStep.FULFIL and shown.state == State.CONFIRMED and step.operation_id not in order.ops and (
            refusal := nowhere_fulfil(engine, shown, nowhere, step.lines[:_first_refused(error, len(step.lines))])):
        return None, {}, refusal
    return done, shares, error


_LINE_FIELD = re.compile(r"lines\[(\d+)\]")


def _first_refused(error: DomainError | None, count: int) -> int:
    """How many of a step's ``count`` lines come up to the one ``error`` names, that one included (``count``: it names
    none)."""
    named = _LINE_FIELD.match(error.fields[0]) if error is not None and error.fields else None
    return int(named[1]) + 1 if named else count


WAY_OUT = "release them once held by hand (docs/OPERATIONS.md, order_part_committed_again)"
"""What a Fulfil refused for units committed nowhere (``nowhere_fulfil``) tells its caller to do: the runbook."""


def nowhere_fulfil(engine: Engine, shown: Reservation, nowhere: Container[str],
                   lines: tuple[LineRequest, ...]) -> InvalidArgument | None:
    """The refusal of a Fulfil of ``shown`` (CONFIRMED) naming ``lines`` (none: the whole order) that takes units its
    lines of the SKUs ``nowhere`` still commit (released ones: refused as ever, ``plan``), naming the field: told done,
    nothing moved out of ``on_hand`` there (no part holds them) and the order no longer counted committed nowhere —
    the units that left the warehouse offered again, no alert saying so (Q1, Q5, R4). None where it takes none."""
    left = [record for record in shown.lines if record.committed and record.sku in nowhere]
    if not lines and left:
        named = ", ".join(f"{record.sku} at {record.group or record.location} in shard group "
                          f"{engine.place(record.sku)}" for record in left)
        return InvalidArgument("lines", (
            f"empty (the whole order) would fulfil units committed nowhere, its lines {named} (another order's part "
            f"of its id in its part's place, kept: nothing there moves out of on_hand): name its other lines, and "
            f"{WAY_OUT}"))
    for n, line in enumerate(lines):
        if any(record.sku == line.sku and line.location in (record.location, record.group) for record in left):
            return InvalidArgument(f"lines[{n}].quantity", (
                f"{line.quantity} exceeds the 0 units committed: its units at shard group {engine.place(line.sku)} "
                f"are committed nowhere (another order's part of its id in its part's place, kept): {WAY_OUT}"))
    return None


async def commit_lost(engine: Engine, order: Reservation, groups: list[int], now: int,
                      found: Mapping[int, Reservation], nowhere: Nowhere, told: Told) -> dict[int, Reservation]:
    """The CONFIRMED ``order``'s parts Redis lost at ``groups`` (``_order_losses.lost_committed``; ``found``: its parts
    read) made again, their units committed again at each (Q3: a confirmed order's; R4: a Fulfil moves them out of
    on_hand), said; the parts as they stand. Units no longer there leave the position oversold (Q5:
    ``atp_oversold_units``), never hidden. Another order's ``stale`` confirmed part there is released, said; one not
    stale is kept (Q3), the order's units there committed nowhere: held so in ``nowhere`` until found otherwise, said
    and counted once per order.
    The groups made again are said once per loss (``told``: not again as the step is sent again while it
    fails, until every step answered or the order is found whole, ``Told.forget``)."""
    # Said as sent (a step whose answer is lost may have made the part: the next pass finds it there, not lost), for
    # the groups to be made — never one whose part read is another order's CONFIRMED one, kept (``commit_again``):
    # nothing is made there, and a line at each read that finds it would say there is.
    read_kept = [group for group in groups if group in found and found[group].state == State.CONFIRMED and
                 not losses.stale(order, found[group], engine.limits)]
    log_stale(told, order.reservation_id, [group for group in groups if group in found and group not in read_kept
                                           and losses.stale(order, found[group], engine.limits)])
    remade = [group for group in groups if group not in read_kept]
    if remade and told.news((REMADE, order.reservation_id), remade):
        log.error("confirmed order %r is missing its parts in shard groups %s (Redis lost acknowledged entries there: "
                  "restarted from older data); they are made again, their units not released committed again there "
                  "(where no longer available, the position shows oversold)", order.reservation_id, remade,
                  extra={"event": "order_part_committed_again", "reservation_id": order.reservation_id,
                         "shard": remade[0]})
    made = {group: CommitPart(losses.part_again(order, group, engine.place, now)) for group in groups}
    parts: dict[int, Reservation] = await run_parts(engine, dict(made))
    told.forget((REMADE, order.reservation_id))  # made: a later loss is one of its own
    kept = losses.others(order, parts, engine.place, engine.limits)  # said once per order, as counted
    if not kept:
        nowhere.gone(order.reservation_id)  # its parts all its own now (made again over another's gone meanwhile)
    elif nowhere.found(order.reservation_id):
        log.error("confirmed order %r has in its place in shard groups %s a confirmed part of another order of its "
                  "id (Redis lost acknowledged entries there: restarted from data older than this order's part); it is "
                  "kept, its units committed (Q3), and this order's units there are committed nowhere",
                  order.reservation_id, kept, extra={"event": "order_part_committed_again",
                                                     "reservation_id": order.reservation_id, "shard": kept[0]})
        engine.metrics.order_sagas.labels("committed_nowhere").inc()  # shown by no position: counted for an alert
    return parts


async def commit_refused(engine: Engine, order: Reservation, parts: dict[int, Reservation],
                         now: int, answered: bool = False) -> dict[int, Reservation]:
    """``parts`` of the undecided ``order`` decided by its parts (as its Reserve steps ``answered`` them, or as read),
    with those lost and refused when reserved again (``_order_losses.refused_again``) made again, their units
    committed (Q3) — where they no longer fit, the position shown oversold (Q5), as ``commit_lost`` does for a
    decided order's."""
    policy = engine.group_policies.get(order.channel, engine.default_group_policy)
    refused = losses.refused_again(order, parts, engine.place, policy.groups if policy is not None else {},
                                   engine.limits, answered)
    if not refused:
        return parts
    log.error("order %r, decided again from a part confirmed, had its parts in shard groups %s lost with its "
              "decision and refused when reserved again; they are made again, their units committed there (where "
              "no longer available, the position shows oversold)", order.reservation_id, sorted(refused),
              extra={"event": "order_part_committed_again", "reservation_id": order.reservation_id,
                     "shard": min(refused)})
    made = await run_parts(engine, {g: CommitPart(losses.part_committed(cmd, now)) for g, cmd in refused.items()})
    return parts | made


def shares_to(engine: Engine, order: Reservation, shares: Mapping[int, PendingOp],
              found: Mapping[int, Reservation], told: Told) -> dict[int, PendingOp]:
    """``_order_losses.shares_for``: the shares of ``order``'s change to its parts read (``found``); another order's
    ``stale`` confirmed part that one releases said (``log_stale``)."""
    given = losses.shares_for(order, shares, found, engine.place, engine.limits)
    foreign = losses.others(order, found, engine.place, engine.limits)
    log_stale(told, order.reservation_id,
              [group for group in foreign if group in given and found[group].state != State.HELD])
    return given


def log_stale(told: Told, order_id: str, groups: list[int]) -> None:
    """Says another order's ``stale`` confirmed parts under ``order_id`` released (none: nothing), as the release is
    sent: once (``told``), not again as each read and pass sends it again while it is refused (a process of an earlier
    release refusing ``share-as-read`` for a whole rolling update)."""
    if not groups or not told.news((STALE, order_id), groups):
        return
    log.error("order %r has in its place in shard groups %s a confirmed part of another order of its id, last changed "
              "long before this order opened (Redis lost acknowledged entries there: restarted from data older than "
              "this order's part): a copy of a part its order resolved before that order was forgotten; released, its "
              "units committed for no order (where that order shipped them, on_hand counts them until a COUNT)",
              order_id, groups, extra={"event": "order_part_stale_released", "reservation_id": order_id,
                                       "shard": groups[0]})


def log_lost(order_id: str, groups: list[int], released: list[int], what: str, others: list[int]) -> None:
    """Says the parts of a live order whose hold is gone (``_order_losses.lost_parts``), and what becomes of it: each
    missing (Redis lost it), or there but ``released`` whole by no change its home records (``released_unrecorded``:
    a Release or expiry its home lost, its record back from older data; or, with leases, an orphan given up as a
    retry of its Reserve opened the order again), or ``others``: another order's part of that id in its place (the
    first no longer remembered, the part's group back from data older than this order's part) — so the operator
    looks for the right cause."""
    why: list[str] = []
    if missing := [group for group in groups if group not in released and group not in others]:
        why.append(f"is missing its parts in shard groups {missing} (Redis lost acknowledged entries there: "
                   "restarted from older data)")
    if released:
        why.append(f"has its parts in shard groups {released} released whole by no change its home records (Redis "
                   "lost acknowledged entries at its home: its record back from older data, before a Release or "
                   "expiry that reached them; or, with leases, given up as orphans as a retry of its Reserve opened "
                   "it again)")
    if others:
        why.append(f"has in its place in shard groups {others} a part of another order of its id, of other content "
                   "or resolved long before this order opened (Redis lost acknowledged entries there: restarted from "
                   "data older than this order's part)")
    log.error("order %r %s; %s", order_id, " and ".join(why), what,
              extra={"event": "order_part_lost", "reservation_id": order_id, "shard": groups[0]})


def log_kept_committed(order_id: str, groups: list[int]) -> None:
    """Says the confirmed parts of an order given up undecided that are kept (``_order_losses.give_up_part``): their
    units committed for an order EXPIRED at its home, until a SHIPMENT naming it fulfils them — no Release can."""
    log.error("order %r, given up undecided at its home, has confirmed parts in shard groups %s (Redis lost its "
              "decision and confirmation at its home: restarted from older data); they are kept, their units "
              "committed until a SHIPMENT naming the order fulfils them (Q3)", order_id, groups,
              extra={"event": "order_part_kept_committed", "reservation_id": order_id, "shard": groups[0]})


def log_confirmed_again(order_id: str, home: int) -> None:
    """Says an order recorded HELD whose part was confirmed (``_order_losses.confirmed_by_parts``): confirmed again."""
    log.error("order %r is recorded HELD at its home though a part of it is confirmed (Redis lost acknowledged "
              "entries of the order's group: restarted from older data); its confirmation is recorded again and "
              "carried through to every part, never expired", order_id,
              extra={"event": "order_confirmation_restored", "reservation_id": order_id, "shard": home})


def log_decided_again(decided: Reservation, home: int) -> None:
    """Says an order recorded undecided whose part was confirmed (``_order_losses.decided_by_parts``), where
    ``decided`` is its decision made again from its parts (``restored``); nothing else."""
    if not losses.restored(decided):
        return
    order_id = decided.reservation_id
    log.error("order %r is recorded undecided at its home (its Reserve pending) though a part of it is confirmed "
              "(Redis lost acknowledged entries of the order's group: restarted from before its decision); it is "
              "decided again from its parts, CONFIRMED, and its confirmation carried through to every part: never "
              "refused, expired nor given up (a part Redis lost there too is reserved again, committed where it no "
              "longer fits)", order_id,
              extra={"event": "order_decision_restored", "reservation_id": order_id, "shard": home})
