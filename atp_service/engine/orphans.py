"""Held parts of orders that no longer exist, or whose order holds nothing any more, with leases
(``Engine.remote``: several processes share the groups): found and given up by housekeeping, a bounded
step at a time.

An order's record is durable at its home before any of its parts is reserved, and it is forgotten
only once resolved with nothing pending (its parts resolved first). So a held part whose order has
no record at any group was left by Redis losing acknowledged entries of the order's group (restarted
from older data) — or torn from its order by one node's loss; releasing it is right either way.
Likewise an order settled in a final state (rejected, expired, released, fulfilled: nothing pending)
recorded its decision only after every part had given up its units; a part still held under it is one
whose change Redis lost while the order's record kept the decision — one node's loss, or Redis back
from older data between the part's release and the order's record, the saga going on from what the
part's process still held in memory. Parts never expire by themselves (``_orders.PART_TTL_MS``): left
alone, either part's units stay held for good (R2: no hold outlives its order's decision or TTL). Not a
part whose units its FULFILLED order fulfilled (``gives_up``): Redis lost their move out of on_hand with
the part's fulfilment, and released they would be offered again though they left; such a part is settled
as its order was instead, those units fulfilled (``lost_moves``, R4), held or confirmed.

A confirmed part likewise keeps committed units (Q3) its order's record released — RELEASED, or FULFILLED
having released some by line (R3) — where Redis lost the part's release: committed never expire, so they
would never be offered again. Those units are given back (``given_back``); what the order fulfilled is
fulfilled (``lost_moves``), and a confirmed part under an order EXPIRED or REJECTED (its record lost
the confirmation) is kept whole, as an orphaned confirmed part is: a paid order's, until shipped.

One process knows only its own groups' records (``Engine.home_of``), and a part does not say where
its order lives (its home need not be a group of its lines), so every group is asked. Only a part
older than the longest TTL (plus ``ORPHAN_AGE_MARGIN_MS``) is a suspect: past it, its order's own
expiry would have released it, and no asking is spent on the young parts of live orders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from atp_service.engine.part_orphans import log_orphaned
from atp_service.engine.parts import GiveUpPart, ReadPart, run_part, tell_home, work_of
from reservation import TERMINAL, Ledger, Limits, LineRequest, Reservation, State
from reservation import _operations as ops
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

log = logging.getLogger(__name__)

ORPHAN_SCAN_PER_PASS = 2_000
"""Records one housekeeping pass looks at, at most, over all the groups served here (a group after
another): a fraction of a ms a pass, 20,000 records a second at the default 100 ms period (about 50 s
a sweep of a million). Orphans are rare (Redis lost acknowledged entries) and a sweep over every
group's every record each pass cost a busy process several percent of a core for nothing."""
ORPHAN_SUSPECTS_MAX = 1_000
"""Suspected orphans remembered at most; one found past it is found again at a later sweep."""
ORPHAN_CHECKS_PER_PASS = 16
"""Suspects one pass asks every group about (one read per group each), at most."""
ORPHAN_AGE_MARGIN_MS = 60_000
"""How far past ``max_ttl_seconds`` a part must be before it is a suspect: covers the clocks of the
processes differing (the order's TTL counted at its home, the part's age here)."""
CONFIRMED_ASKED_EVERY_MS = 600_000
"""How often, at most, a group's sweep asks about its confirmed parts whose order lives at another process
(every group read for each, as for a suspect): the first sweep of a group taken (recovered: where Redis lost
a part's release) and then one every ten minutes of its clock. Confirmed parts are not rare (orders waiting
to ship), nor do their orders' records say anything here: asked at every sweep, those of a busy group kept
the asking at its bound, thousands of peer reads a second, for a repair Redis losing entries calls for."""

Spawn = Callable[[Coroutine[Any, Any, None]], None]
Given = tuple[str, str]
"""What a part held and what became of it, as said (``log_outlived``)."""


def holds_nothing(record: Reservation | None) -> bool:
    """Whether ``record`` is an order whose parts hold nothing (R2, R3): settled, no change pending, in a
    final state — it gave up or moved every unit of its parts before it recorded that."""
    return record is not None and record.is_order and record.pending is None and record.state in TERMINAL


def gives_up(record: Reservation | None, part: Reservation) -> bool:
    """Whether ``record`` (``holds_nothing``) decided that the units of its held ``part`` be given back: it
    was rejected, expired or released, or FULFILLED releasing every unit it was granted at the part's SKUs
    (a SKU's lines are all in one group). Units of a FULFILLED order not released were fulfilled: they left
    ``on_hand`` with the part's fulfilment (R4), and Redis lost that with the on_hand move — released now,
    they would be offered again though they left the building (Q5: oversold). Such a part is fulfilled
    instead (``lost_moves``)."""
    if not holds_nothing(record):
        return False
    assert record is not None
    if record.state != State.FULFILLED:
        return True
    skus = {line.sku for line in part.lines}
    return all(line.granted <= line.released for line in record.lines if line.sku in skus)


def given_back(records: Sequence[Reservation], part: Reservation) -> tuple[LineRequest, ...]:
    """The committed units of a CONFIRMED ``part`` (Q3) that its order, settled in each of ``records``
    (``holds_nothing``), released and the part has not: Redis lost the part's release while the order's group
    kept the order's record of it. Per position, what every record released there past what the part has
    released, at most what the part has committed (none: nothing to give back). An order's record counts
    what its parts released as it read them after its change (``_orders.settled``), SHIPMENT facts racing it
    included. Only an order RELEASED or FULFILLED released confirmed units (R3: CONFIRMED -> RELEASED, also
    by line, or FULFILLED). Units it did not release were fulfilled: Redis lost their move out of on_hand
    (R4) with the part's fulfilment, so they stay committed — released they would be offered again though
    they left the building (Q5: oversold). A HELD order expires and a refused one was never confirmed: an
    order EXPIRED or REJECTED over a confirmed part is one whose record lost the confirmation (Redis lost its
    group's entries), the part the one trace of a paid order — kept, as an orphaned confirmed part is, until
    a SHIPMENT naming the order fulfils it."""
    if part.state != State.CONFIRMED or not records or not all(
            holds_nothing(record) and record.state in (State.RELEASED, State.FULFILLED) for record in records):
        return ()
    committed = ops.per_position(part.lines, lambda line: line.committed)
    had = ops.per_position(part.lines, lambda line: line.released)
    released = [ops.per_position(record.lines, lambda line: line.released) for record in records]
    back = []
    for (sku, location), units in committed.items():
        lost = min(each.get((sku, location), 0) for each in released) - had[(sku, location)]
        if min(units, lost) > 0:
            back.append(LineRequest(sku, location, min(units, lost)))
    return tuple(back)


Moves = tuple[tuple[LineRequest, ...], tuple[LineRequest, ...]]
"""Units of a part to release, and units to fulfil (``lost_moves``)."""


def lost_moves(records: Sequence[Reservation], part: Reservation) -> Moves:
    """(units to release, units to fulfil) of a HELD or CONFIRMED ``part`` whose order, settled FULFILLED in each of
    ``records`` (``holds_nothing``), released or fulfilled them, where Redis lost the part's changes while the
    order's group kept its record (R3, R4). Per position: what every record released past what the part has
    released, then what every record fulfilled (granted, not released) past what the part has fulfilled, at most
    what the part still holds or has committed. Kept held or committed, the fulfilled units - whose move out of
    ``on_hand`` Redis lost with the part's fulfilment - stood reserved or committed for good, above on_hand once a
    COUNT corrected it (Q5: shown oversold); released, they would be offered again though they left. Fulfilled,
    they leave on_hand again."""
    if part.state not in (State.HELD, State.CONFIRMED) or not records or not all(
            holds_nothing(record) and record.state == State.FULFILLED for record in records):
        return (), ()
    left = ops.per_position(part.lines, lambda line: line.outstanding)
    moves: list[list[LineRequest]] = [[], []]
    # An order settled FULFILLED fulfilled every unit it granted and did not release (its record counts releases).
    for out, by_part, by_order in zip(moves, (lambda line: line.released, lambda line: line.fulfilled),
                                      (lambda line: line.released, lambda line: line.granted - line.released),
                                      strict=True):
        had = ops.per_position(part.lines, by_part)
        done = [ops.per_position(record.lines, by_order) for record in records]
        for (sku, location), units in left.items():
            lost = min(units, min(each.get((sku, location), 0) for each in done) - had[(sku, location)])
            if lost > 0:
                out.append(LineRequest(sku, location, lost))
                left[(sku, location)] = units - lost
    return tuple(moves[0]), tuple(moves[1])


def _suspect(part: Reservation, order: Reservation | None, elsewhere: bool) -> bool:
    """Whether ``part`` (old enough) is to be asked about: ``order``, its record here (None: not here), gave its
    units up (``gives_up``, ``given_back``) — or, not here, every group is asked (a confirmed part only where
    ``elsewhere``: a sweep that asks about those, ``CONFIRMED_ASKED_EVERY_MS``)."""
    if part.state == State.HELD:
        return order is None or gives_up(order, part) or any(lost_moves([order], part))
    if part.state != State.CONFIRMED or not any(line.committed for line in part.lines):
        return False
    return elsewhere if order is None else bool(given_back([order], part)) or any(lost_moves([order], part))


def settle_fulfilled(ledger: Ledger, part: Reservation, moves: Moves, fulfilled_at: int, now: int,
                     limits: Limits) -> Given:
    """``part`` settled as its FULFILLED order was (``lost_moves``): what the order released released, the part
    confirmed if held, the rest fulfilled, the shipment stamped when the order's fulfilment was recorded (a COUNT
    stamped after it already counts the units gone: it absorbs the shipment, E4, instead of taking them off twice)."""
    had = f"held {sum(line.held for line in part.lines)}" if part.state == State.HELD else \
        f"had {sum(line.committed for line in part.lines)} committed"
    rid, ship_at = part.reservation_id, min(fulfilled_at, now)
    if moves[0]:
        ops.release(ledger, rid, moves[0], "", now, limits)
    if part.state == State.HELD:
        ops.confirm(ledger, rid, now)
    ops.fulfill(ledger, rid, moves[1], "", now, limits, ship_at=ship_at)
    released, fulfilled = (sum(line.quantity for line in each) for each in moves)
    return (f"{had} units its order released ({released}) or fulfilled ({fulfilled})",
            f"released {released} and fulfilled {fulfilled}, their move out of on_hand stamped at {ship_at} "
            "(when the order's fulfilment was recorded)")


def log_outlived(part_id: str, shard: int, order: Reservation, given: Given) -> None:
    """Says a part's units given up under an order that holds nothing (``holds_nothing``): ``given``."""
    log.error("part %r %s under its order, %s with nothing pending (Redis lost acknowledged entries of the "
              "part's group that its order's group kept): %s", part_id, given[0], State(order.state).name, given[1],
              extra={"event": "order_part_outlived", "reservation_id": order.reservation_id, "shard": shard})


class LeasedOrphans:
    """Finds held parts whose order is nowhere, or holds nothing, and confirmed parts whose order released
    their units (``run_pass``, from housekeeping), and gives those units up."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sweeps: dict[int, tuple[Ledger, list[str], int, bool]] = {}
        """Group -> (the ledger being swept, its ids when the sweep began, how far it got, whether it asks about
        confirmed parts whose order is not here)."""
        self._confirmed_asked: dict[int, int] = {}  # group -> when its last sweep asking about those began
        self.suspects: dict[str, tuple[int, int]] = {}
        """Part id -> (its group, its ``updated_at`` when found): asked about at the next passes."""
        self._asking = False
        self._next_group = 0  # where the next pass's scan begins (``ORPHAN_SCAN_PER_PASS`` over all groups)

    def run_pass(self, spawn: Spawn) -> None:
        """Look at the next records of every group served here; ask about a few suspects (in the
        background: one round of asking at a time)."""
        self._scan()
        if self.suspects and not self._asking:
            self._asking = True
            spawn(self._check_all(list(islice(self.suspects.items(), ORPHAN_CHECKS_PER_PASS))))

    def _scan(self) -> None:
        engine, budget = self._engine, ORPHAN_SCAN_PER_PASS
        age = engine.limits.max_ttl_seconds * 1000 + ORPHAN_AGE_MARGIN_MS
        actors = engine.actors
        for step in range(len(actors)):
            actor = actors[(self._next_group + step) % len(actors)]
            if actor.vacant:  # not served here: its owner looks
                self._sweeps.pop(actor.shard, None)
                continue
            if budget <= 0:
                return
            ledger, oldest = actor.ledger, actor.clock.now_ms() - age  # the clock its parts were stamped by (R6)
            swept, ids, at, elsewhere = self._sweeps.get(actor.shard, (None, [], 0, False))
            if swept is not ledger or at >= len(ids):  # a new sweep (or the group recovered anew)
                ids, at = list(ledger.reservations), 0  # the ids only: the ledger may change between passes
                now, asked = actor.clock.now_ms(), self._confirmed_asked.get(actor.shard)
                elsewhere = swept is not ledger or asked is None or now - asked >= CONFIRMED_ASKED_EVERY_MS
                if elsewhere:
                    self._confirmed_asked[actor.shard] = now
            looked = ids[at:at + budget]
            budget -= len(looked) or 1  # an empty group costs a little too: the budget always runs out
            for rid in looked:
                if len(self.suspects) >= ORPHAN_SUSPECTS_MAX:
                    break
                part = ledger.reservations.get(rid)
                order_id = orders.order_of(rid)
                if part is None or order_id is None or part.created_at > oldest:
                    continue
                home = engine.home_of(order_id)  # None: its order's record is not here, asked everywhere
                if _suspect(part, None if home is None else actors[home].ledger.reservation(order_id), elsewhere):
                    self.suspects.setdefault(rid, (actor.shard, part.updated_at))
            self._sweeps[actor.shard] = (ledger, ids, at + len(looked), elsewhere)
            # The next pass goes on where this one stopped: this group's sweep, or the next group.
            self._next_group = actor.shard if at + len(looked) < len(ids) else (actor.shard + 1) % len(actors)

    async def _check_all(self, batch: list[tuple[str, tuple[int, int]]]) -> None:
        try:
            await asyncio.gather(*(self._check(part_id, group, seen) for part_id, (group, seen) in batch))
        finally:
            self._asking = False

    async def _check(self, part_id: str, group: int, seen: int) -> None:
        order_id = orders.order_of(part_id)
        assert order_id is not None
        ended: list[Reservation] = []  # the order's records, where they all hold nothing
        released: Given | None = None  # what was given up
        try:
            found = await self._records(order_id)
            if found is None:  # a group did not answer for sure: asked again at a later pass
                self.suspects[part_id] = self.suspects.pop(part_id)  # behind the others
                return
            # No record anywhere: an orphan. Records that all hold nothing: the part outlived its order's
            # decision. Any other record: a live order, whose own change or expiry gives the part up.
            if found and all(holds_nothing(record) for record in found):
                ended = found
            if not found or ended:
                released = await self._give_up(order_id, part_id, group, seen, ended)
        except Exception as exc:  # the group moved, a log did not answer: a later sweep finds it again
            log.info("orphaned part %r: not given up now (%r)", part_id, exc)
        self.suspects.pop(part_id, None)
        if released and ended:
            log_outlived(part_id, group, ended[0], released)
        elif released:
            log_orphaned(part_id, group, "holds units: released")
            if await self._anywhere(order_id) is not False:
                await self._settle_reopened(order_id)

    async def _anywhere(self, order_id: str) -> bool | None:
        """Whether any group holds ``order_id``'s record; None: not known (a group did not answer)."""
        found = await self._records(order_id)
        return None if found is None else bool(found)

    async def _records(self, order_id: str) -> list[Reservation] | None:
        """The records of ``order_id`` every group holds (none: nowhere); None: not known (a group did not
        answer). A group's "none" comes only from its owner's shard, recovered and not in doubt (a vacant
        or recovering one is refused as moved or unavailable): it is what Redis holds."""
        engine = self._engine
        answers = await asyncio.gather(*(run_part(engine, g, ReadPart(order_id)) for g in range(len(engine.actors))),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # cancelled
        if any(isinstance(answer, BaseException) for answer in answers):
            return None
        return [answer for answer in answers if isinstance(answer, Reservation)]

    async def _give_up(self, order_id: str, part_id: str, group: int, seen: int, ended: list[Reservation]
                       ) -> Given | None:
        """The part's units given up, under its order's lock here (no saga of the order runs here meanwhile),
        in one turn of its group that finds it as it was seen (not changed since: ``seen`` is its
        ``updated_at``, as records change in place); what was given up (None: nothing). ``ended``: its
        order's records, that all hold nothing (``holds_nothing``): a held part released only where each gave
        its units up (``gives_up``), a confirmed one's committed units only those each released
        (``given_back``); none: there is none (a held part released, a confirmed one kept: Q3)."""
        engine = self._engine
        assert engine.orders is not None
        records = list(ended)

        def release(ledger: Ledger, now: int) -> Given | None:
            part = ledger.reservation(part_id)
            if part is None or part.updated_at != seen:
                return None  # changed meanwhile: not an untouched orphan (found again if it still is one)
            if not (part.state == State.HELD and all(gives_up(record, part) for record in records)):
                moves = lost_moves(records, part)
                if moves[1]:  # R4, Q5: units its FULFILLED order fulfilled: fulfilled here too, not kept nor released
                    fulfilled_at = max(record.updated_at for record in records)
                    return settle_fulfilled(ledger, part, moves, fulfilled_at, now, engine.limits)
            if part.state == State.CONFIRMED:
                back = given_back(records, part)  # R3, Q3: only what the order released; Q5: not what it fulfilled
                if not back:
                    return None
                # No operation id: the release neither counts against the part's operations nor is kept among
                # them (a later look finds the units released by it, and gives none back again).
                ops.release(ledger, part_id, back, "", now, engine.limits)
                units, committed = sum(line.quantity for line in back), sum(line.committed for line in part.lines)
                return (f"had {units} committed units its order released", "released" if committed == units else
                        f"released ({committed - units} kept committed: units its order fulfilled)")
            if part.state != State.HELD or not all(gives_up(record, part) for record in records):
                return None
            work_of(engine, GiveUpPart(orders.command_of(part)))(ledger, now)
            return f"held {sum(line.held for line in part.lines)} units", "released"

        async def locked() -> Given | None:
            home = engine.home_of(order_id)  # here: a retry opened it meanwhile, or it still holds nothing
            if home is not None:
                here = engine.actors[home].ledger.reservation(order_id)
                if not ended or here is None or not holds_nothing(here):
                    return None
                records.append(here)
            done: Given | None = await engine.actors[group].submit(release)
            return done

        released: Given | None = await engine.orders.run_locked(order_id, locked)
        return released

    async def _settle_reopened(self, order_id: str) -> None:
        """A retry of the order's Reserve opened it again while its part was given up (or it is not
        known whether one did): its record is resolved RELEASED if every part is (R2: nothing stays
        held; that retry's hold is lost), wherever it lives; where a part of it still holds, its Confirm gives it up
        whole (``_order_losses.released_unrecorded``, R2)."""
        engine = self._engine
        home = engine.home_of(order_id)
        try:
            if home is not None and engine.orders is not None:
                await engine.orders.resolve_if_done(order_id, home)
            else:
                await tell_home(engine, order_id)
        except Exception as exc:  # left HELD with nothing held: its expiry resolves it
            log.info("order %s: not resolved after its orphaned part was released (%r)", order_id, exc)
