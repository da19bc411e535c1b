"""The invariants checked after every simulation step, each against a model kept outside the engine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from atp_service.engine.orphans import given_back, lost_moves
from reservation import TERMINAL, Event, Fact, FactKind, Reservation, State, decode_entry
from reservation import _orders as orders
from reservation._bulk import loaded_facts
from reservation._events import CountsLoaded, FactApplied, Shipped
from tests.sim import replaycache
from tests.sim.world import World

# R3: what a reservation may have become since a state was acknowledged.
SUCCESSORS = {
    State.HELD: {State.HELD, State.CONFIRMED, State.EXPIRED, State.RELEASED, State.FULFILLED},
    State.CONFIRMED: {State.CONFIRMED, State.RELEASED, State.FULFILLED},
    State.REJECTED: {State.REJECTED},
    State.EXPIRED: {State.EXPIRED},
    State.RELEASED: {State.RELEASED},
    State.FULFILLED: {State.FULFILLED},
}


# R2: what the parts of a settled order that still holds units may be: a partial release or fulfilment
# (or a SHIPMENT fact) may have settled one part whole, never confirmed a part of a held order.
PART_STATES = {State.HELD: {State.HELD, State.RELEASED},
               State.CONFIRMED: {State.CONFIRMED, State.FULFILLED, State.RELEASED}}


@dataclass
class Acknowledged:
    """What the clients were told succeeded: it must survive anything (R7)."""

    reservations: dict[str, State] = field(default_factory=dict)
    facts: set[tuple[str, str]] = field(default_factory=set)


class Violation(AssertionError):
    pass


def check(world: World, acked: Acknowledged) -> None:
    ledgers = [actor.ledger for actor in world.eng.actors]
    records = {rid: rec for ledger in ledgers for rid, rec in ledger.reservations.items()}
    one_state_each(records)
    holds_match_positions(ledgers, records)
    acknowledged_survive(world, records, acked)
    facts_fold_as_the_reference(world, ledgers)
    orders_hold_what_they_decided(records, getattr(world.eng.orders, "orphans", ()), world.lost_orders,
                                  world.torn_orders, world.eng.place, world.torn_confirmed,
                                  outlived=world.outlived_orders)


def one_state_each(records: dict) -> None:  # type: ignore[type-arg]
    for rid, rec in records.items():
        state = State(rec.state)
        if state == State.HELD and rec.expires_at <= 0:
            raise Violation(f"R3: {rid} is HELD without an expiry")
        for line in rec.lines:
            if line.held < 0 or line.committed < 0:
                raise Violation(f"R3: {rid} has negative units {line}")
            if state != State.HELD and line.held:
                raise Violation(f"R3: {rid} is {state.name} but still holds {line.held} at {line.location}")
            if state in TERMINAL and line.committed:
                raise Violation(f"R3: {rid} is {state.name} but still commits {line.committed}")


def holds_match_positions(ledgers: list, records: dict) -> None:  # type: ignore[type-arg]
    """Q2/Q3: a position's reserved and committed are exactly what the reservations hold there."""
    held: Counter[tuple[str, str]] = Counter()
    committed: Counter[tuple[str, str]] = Counter()
    for rec in records.values():
        for line in rec.lines:
            held[(line.sku, line.location)] += line.held
            committed[(line.sku, line.location)] += line.committed
    seen = set()
    for ledger in ledgers:
        for sku, location, q in ledger.store.items():
            key = (sku, location)
            seen.add(key)
            if (q.reserved, q.committed) != (held[key], committed[key]):
                raise Violation(f"Q2/Q3: {key} reserved/committed {q.reserved}/{q.committed}, "
                                f"reservations hold {held[key]}/{committed[key]}")
    for key in set(held) | set(committed):
        if key not in seen and (held[key] or committed[key]):
            raise Violation(f"Q2/Q3: reservations hold units at {key}, which no shard has")


def acknowledged_survive(world: World, records: dict, acked: Acknowledged) -> None:  # type: ignore[type-arg]
    for rid, state in acked.reservations.items():
        rec = records.get(rid)
        if rec is None:
            raise Violation(f"R7: acknowledged reservation {rid} ({state.name}) is gone")
        now = State(shown(rec, records).state)
        if now not in SUCCESSORS[state]:
            raise Violation(f"R7: {rid} was acknowledged {state.name}, is now {now.name}")
    missing = acked.facts - world.logged_fact_ids()
    if missing:
        raise Violation(f"R7: acknowledged facts not in the log: {sorted(missing)[:5]}")


def shown(rec: Reservation, records: dict[str, Reservation]) -> Reservation:
    """A reservation as its callers see it: an order spanning groups with its parts' lines."""
    if not rec.is_order:
        return rec
    parts = {g: records[orders.part_id(rec.reservation_id, g)] for g in rec.parts
             if orders.part_id(rec.reservation_id, g) in records}
    return orders.view(rec, parts)  # as GetReservation shows it (a part never reserved: the order's own record)


def orders_hold_what_they_decided(records: dict[str, Reservation], orphans: Collection[str] = (),
                                  lost_orders: Collection[str] = (), torn_orders: Collection[str] = (),
                                  place: Callable[[str], int] = lambda _sku: -1,
                                  torn_confirmed: Collection[str] = (), lost_looked_for: int | None = None,
                                  outlived: Collection[str] = ()) -> None:
    """R2/R3 for orders spanning groups: no part holds units its settled order does not (a refused,
    expired or released order's parts hold nothing), and a part of an order that does not exist (Redis
    lost the order's record) holds nothing either, unless the service found it and is giving it up
    (``orphans``) — or it is a part of one of ``lost_orders`` with several processes, which housekeeping
    looks for only once it is older than the longest TTL (``orphans.LeasedOrphans``), at its group's owner,
    with every group answering: exempt until ``lost_looked_for`` (a time: such a part created at or
    before it holds nothing; None: not checked at this point).
    ``torn_orders``: orders of which one Redis Cluster node lost records (the order's or a part's) while
    the other nodes kept theirs: such an order may be HELD without its part (what Redis holds, until the
    service reads the order's parts: a Confirm then gives it up whole, ``Orders._give_up_if_torn``) —
    never CONFIRMED without a part that was granted units (``place``: a SKU's group), which would leave
    them committed nowhere, to be sold again — unless it was confirmed before the loss
    (``torn_confirmed``: no Confirm was left to refuse; recreating such a part is a known gap). Such an
    order may also be ahead of a part whose node lost the part's change: a part still HELD under an order
    settled in a final state that gave its units up (``orphans.gives_up``) waits for housekeeping as
    ``outlived``'s do, and so does a part CONFIRMED keeping committed units its order, settled RELEASED or
    FULFILLED, released (``orphans.given_back``: housekeeping gives those back); any other such disagreement
    (a part CONFIRMED under an order that released none of its units and fulfilled none, or under a live order)
    is a known gap, not checked here — the part keeps its units (Q2/Q3 still checked), nothing is oversold.
    ``outlived``: orders a part of which Redis, back whole from older data, lost a change its process still
    held in memory, so that a saga going on from that memory may have recorded a decision that holds nothing
    while the part holds units again: such a held part is exempt until ``lost_looked_for`` (as ``lost_orders``':
    housekeeping releases it once past the longest TTL, ``orphans.LeasedOrphans``); a confirmed one only for
    the committed units its order released (``orphans.given_back``), and a held or confirmed one whose units its
    FULFILLED order fulfilled until housekeeping fulfils them there (``orphans.lost_moves``, R4)."""
    for rid, rec in records.items():
        order_id = orders.order_of(rid)
        # A confirmed part of a lost order is kept, its units a paid order's, committed until a SHIPMENT
        # fulfils them (docs/OPERATIONS.md ``order_part_orphaned``); only held ones are looked for.
        exempt = order_id in lost_orders and (lost_looked_for is None or rec.created_at > lost_looked_for
                                              or not any(line.held for line in rec.lines))
        if (order_id is not None and order_id not in records and rid not in orphans and not exempt
                and sum(line.outstanding for line in rec.lines) != 0):
            raise Violation(f"R2: part {rid!r} of an order that does not exist holds units")
        if not rec.is_order or rec.pending is not None:
            continue
        state = State(shown(rec, records).state)
        for group in rec.parts:
            part = records.get(orders.part_id(rid, group))
            if part is None:  # never reserved: a refused order, or one never decided within its TTL
                if state not in TERMINAL and not (rid in torn_orders and (
                        state == State.HELD or rid in torn_confirmed or not any(
                            line.granted for line in rec.lines if place(line.sku) == group))):
                    raise Violation(f"R2: order {rid} is {state.name} without its part in group {group}")
                continue
            held_under_final = state in TERMINAL and part.state == State.HELD  # given up by housekeeping
            # A confirmed part keeping committed units its settled order released (Redis lost the part's release):
            # given back by housekeeping once past the longest TTL (``orphans.given_back``, R3, Q3), not before.
            # Or a part holding or committing units its FULFILLED order fulfilled (Redis lost their move out of
            # on_hand with the part's fulfilment): fulfilled by housekeeping likewise (``orphans.lost_moves``, R4).
            back = _owed(rec, part) if rid in torn_orders or rid in outlived else 0
            if back and lost_looked_for is not None and part.created_at <= lost_looked_for:
                raise Violation(f"R3/Q3: order {rid} is {state.name} but its part in group {group} keeps "
                                f"{back} units the order released or fulfilled")
            if back:
                continue  # waits for housekeeping (what the order fulfilled is checked by Q3 as any committed unit)
            if rid in torn_orders and not held_under_final:
                continue  # the order ahead of its part (the part's node lost its change): a known gap
            outstanding = sum(line.outstanding for line in part.lines)
            waits = held_under_final and (rid in outlived or rid in torn_orders) and (
                lost_looked_for is None or part.created_at > lost_looked_for)
            if state in TERMINAL and outstanding and not waits:
                raise Violation(f"R2/R3: order {rid} is {state.name} but its part in group {group} holds {outstanding}")
            allowed = PART_STATES.get(state, set()) | ({State.REJECTED} if rec.allow_partial else set())
            if state not in TERMINAL and State(part.state) not in allowed:
                raise Violation(f"R2: order {rid} is {state.name} but its part in group {group} is "
                                f"{State(part.state).name}")


def _owed(order: Reservation, part: Reservation) -> int:
    """Units of ``part`` its settled ``order`` gave up or fulfilled, that housekeeping gives up or fulfils there."""
    moves = lost_moves([order], part)
    return sum(line.quantity for each in moves for line in each) if any(moves) else \
        sum(line.quantity for line in given_back([order], part))


def _facts_of(event: Event) -> list[Fact]:
    if isinstance(event, FactApplied):
        return [event.fact]
    return loaded_facts(event) if isinstance(event, CountsLoaded) else []


def facts_fold_as_the_reference(world: World, ledgers: list) -> None:  # type: ignore[type-arg]
    """E1-E3 and E8: on_hand equals the textbook fold of what the log holds, each fact once: by the history
    read once (``historyfacts.py``); where that finds anything wrong, as ``fresh_fold`` reports it."""
    facts = world.history_facts
    facts.catch_up()
    if not facts.twice:
        actual = {(s, loc): q.on_hand for ledger in ledgers for s, loc, q in ledger.store.items()}
        if all(actual.get(position, 0) == expected for position, expected in facts.folded().items()):
            if replaycache.CHECK:
                fresh_fold(world, ledgers)
            return
    fresh_fold(world, ledgers)
    raise AssertionError("the history's facts read once fold otherwise than read afresh (historyfacts.py)")


def fresh_fold(world: World, ledgers: list) -> None:  # type: ignore[type-arg]
    """E1-E3 and E8 by the whole history, read afresh. E1 order: (event_time, rank, source, event_id); the
    service's shipments sort as source ""."""
    events: dict[tuple[str, str], list[tuple[tuple[int, int, str, str], int, bool]]] = {}
    applied: set[tuple[str, str, str, str]] = set()
    for entries in world.log.history.values():
        for _, data in entries:
            for e in decode_entry(data).events:
                if isinstance(e, Shipped):
                    events.setdefault((e.sku, e.location), []).append(((e.at, 0, "", e.ref), -e.quantity, False))
                for f in _facts_of(e):
                    identity = (f.source, f.event_id, f.sku, f.location)  # E8: per position
                    if identity in applied:
                        raise Violation(f"E8: fact {f.source}/{f.event_id} at {f.sku}@{f.location} applied twice")
                    applied.add(identity)
                    is_count = f.kind == FactKind.COUNT
                    key = (f.event_time, 1 if is_count else 0, f.source, f.event_id)
                    events.setdefault((f.sku, f.location), []).append((key, f.quantity if is_count else f.delta,
                                                                       is_count))
    actual = {(s, loc): q.on_hand for ledger in ledgers for s, loc, q in ledger.store.items()}
    for position, items in events.items():
        items.sort(key=lambda item: item[0])
        last_count = max((i for i, item in enumerate(items) if item[2]), default=None)
        if last_count is None:
            expected = sum(q for _, q, _ in items)
        else:
            expected = items[last_count][1] + sum(q for _, q, c in items[last_count + 1:] if not c)
        if actual.get(position, 0) != expected:
            raise Violation(f"E2/E3: {position} on_hand {actual.get(position, 0)}, "
                            f"the fold of the log gives {expected}")
