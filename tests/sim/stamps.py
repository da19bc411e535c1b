"""The service timestamps each shard group's log entries carry, checked against R6 and R3 whatever the
processes' clocks say (``skew.py``): every entry a group ever logged (``SimLog.history``, cut back with
Redis when it lost a tail) is stamped no lower than the one before it in that group (R6: never below a
timestamp already logged), and no hold is expired by an entry stamped before its expiry (R3: a TTL
counts from the group's own stamps). In the world's time a hold may expire up to the skew early or late
across a takeover (docs/SEMANTICS.md R6): that is the documented limit, not checked here. And the committed
units of a confirmed reservation, or of an order's confirmed part, are released only by a Release a client
sent for it (R3: only HELD -> EXPIRED; Q3: committed units never expire) — or, a part's, by its order given
up whole (``_orders.abandoned``: a part Redis lost found as its Confirm, stopped half-way, was carried
through; its caller told nothing yet). Never by an expiry, whatever Redis lost: an order whose home's record
went back to HELD while a part stayed CONFIRMED is confirmed again (``reservation/_order_losses.py``), and one
whose record went back to undecided (its Reserve pending) is decided again, CONFIRMED: an order given up whole
over its Reserve pending (past its TTL, or a part refused by a rule) never had a part confirmed, so it releases
no committed units, and no order is decided REJECTED, or given up so, while a part of it stays confirmed — but
one it was given up without, its group silent (``Unanswered``: the documented case it cannot see, kept committed). A
part's release is judged once its order's record is settled (a record given up that Redis lost is decided
again), and not where no group holds the record.

Incremental: each group's entries are decoded once; a history cut back (a tail lost) is read again, and so is a
group whose entry was found wrong (a test of the checker goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from reservation import OrderStep, Outcome, Reservation, State, decode_entry
from reservation import _operations as ops
from reservation import _orders as orders
from reservation._events import ReservationSaved
from tests.sim import replaycache
from tests.sim.checks import Violation
from tests.sim.simlog import SimLog


@dataclass
class _GroupStamps:
    seen: list[tuple[int, bytes]] = field(default_factory=list)  # the history entries read so far
    newest: int = 0  # the newest stamp among them
    holds: dict[str, Reservation] = field(default_factory=dict)  # each reservation's last saved version
    freed: dict[str, str] = field(default_factory=dict)  # part id -> its committed units released, as said
    undecided: dict[str, str] = field(default_factory=dict)  # order id -> how its record was decided over its
    # Reserve pending: refused, or given up (``_orders.abandoned``) — never over a part confirmed (R3)


class Unanswered(logging.Filter):
    """The parts an order's expiry or abandonment at its home went on without, their groups silent past its TTL and
    the bound (the service's warning ``order_expired_parts_unanswered``, ``order_expiry``), taken as the service says
    them and the warning dropped (only errors are logged). Such a part confirmed, its home having lost the
    confirmation, is the one case the service cannot see (docs/SEMANTICS.md, R3 and R8 with several processes): it is
    kept committed (Q3), its order given up undecided, ``EXPIRED``."""

    LOGGER = "atp_service.engine.order_expiry"

    def __init__(self) -> None:
        super().__init__()
        self.parts: set[str] = set()
        self._level = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event", None) != "order_expired_parts_unanswered":
            return record.levelno >= logging.ERROR  # as before the logger was let warn
        self.parts |= {orders.part_id(record.reservation_id, group) for group in record.groups}
        return False

    def __enter__(self) -> Unanswered:
        logger = logging.getLogger(self.LOGGER)
        self._level = logger.level
        logger.setLevel(logging.WARNING)
        logger.addFilter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        logger.setLevel(self._level)


class StampChecker:
    def __init__(self, log: SimLog, released: Collection[str] = (), unanswered: Collection[str] = ()) -> None:
        """``released``: the reservations (orders: by the order's id) a client sent a Release for, ever.
        ``unanswered``: the parts an order was given up or expired without, unread (``Unanswered``)."""
        self._log = log
        self._released = released
        self._unanswered = unanswered
        self._groups: dict[int, _GroupStamps] = {}
        self._afresh = False  # a checker made to read afresh, for ``SIM_CACHE_CHECK``

    def check(self) -> None:
        for shard, entries in self._log.history.items():
            group = self._groups.get(shard)
            if group is None or len(entries) < len(group.seen) or any(
                    a is not b for a, b in zip(entries, group.seen, strict=False)):
                group = self._groups[shard] = _GroupStamps()  # new, or cut back: read again
            for item in entries[len(group.seen):]:  # the history's own tuples, compared by identity above
                try:
                    _read(shard, *item, group, self._released)
                except BaseException:
                    del self._groups[shard]  # judged part of the entry: read the group again at the next check
                    raise
                group.seen.append(item)
        self._check_freed()
        if replaycache.CHECK and self._groups and not self._afresh:  # ``SIM_CACHE_CHECK``: read once = afresh
            fresh = StampChecker(self._log, self._released)
            fresh._afresh = True
            fresh.check()
            for shard, group in self._groups.items():
                again = fresh._groups[shard]
                assert (group.newest, group.holds, group.undecided) == (again.newest, again.holds, again.undecided), \
                    f"stamps: group {shard} read once and afresh differ"

    def _check_freed(self) -> None:
        """R3/Q3: each part whose committed units were released with no Release of its order sent belongs to an
        order given up whole (``_given_up``) once decided — not over its Reserve pending (``undecided``) —, its record
        settled; none where it is pending or held nowhere. And no part stays confirmed under an order decided over
        its Reserve pending (``_check_undecided``)."""
        records = {rid: rec for group in self._groups.values() for rid, rec in group.holds.items() if rec.is_order}
        undecided = {rid: how for group in self._groups.values() for rid, how in group.undecided.items()}
        for group in self._groups.values():
            for part_id, said in group.freed.items():
                order_id = orders.order_of(part_id) or ""
                order = records.get(order_id)
                if order_id in self._released or order is None or order.pending is not None or (
                        _given_up(order) and order_id not in undecided):
                    continue
                how = f" ({undecided[order_id]} over its Reserve pending)" if order_id in undecided else ""
                raise Violation(f"R3/Q3: {part_id!r} {said}, its order {State(order.state).name}{how}: neither "
                                f"released by a Release of it nor given up whole once decided")
            _check_undecided(group, records, undecided, self._unanswered)


def _check_undecided(group: _GroupStamps, records: dict[str, Reservation], undecided: dict[str, str],
                     unanswered: Collection[str]) -> None:
    """R3/Q3: a part confirmed (CONFIRMED, or FULFILLED by shipments) proves its order was decided and confirmed: an
    order whose record, settled, was decided over its Reserve pending — refused, or given up undecided — while such
    a part of it (``_own``) stands lost its decision at its home and was decided again as if undecided
    (``_order_losses``). Not a part it was given up without (``unanswered``): the documented case it cannot see."""
    for part_id, part in group.holds.items():
        order_id = orders.order_of(part_id) or ""
        order = records.get(order_id)
        if (order_id in undecided and order is not None and order.pending is None and part_id not in unanswered
                and part.state in (State.CONFIRMED, State.FULFILLED) and _own(part, order)):
            raise Violation(f"R3/Q3: {part_id!r} is {State(part.state).name} under its order "
                            f"{State(order.state).name}, {undecided[order_id]} over its Reserve pending")


def _own(part: Reservation, order: Reservation) -> bool:
    """Whether ``part`` holds what ``order`` asks of its group (a SKU's lines all go to one group): not a part of
    another order of that id — one whose record Redis lost, the id opened again with other content, refused (R5),
    its confirmed part kept (``_order_losses.give_up_part``)."""
    mine = ops.requested_lines(part)
    skus = {line.sku for line in mine}
    return mine == tuple(line for line in ops.requested_lines(order) if line.sku in skus)


def _read(shard: int, seq: int, data: bytes, group: _GroupStamps, released: Collection[str]) -> None:
    entry = decode_entry(data)
    if entry.ts < group.newest:
        raise Violation(f"R6: group {shard}'s entry {seq} is stamped {entry.ts}, below {group.newest} "
                        f"already logged there ({group.newest - entry.ts} ms)")
    group.newest = entry.ts
    for event in entry.events:
        if not isinstance(event, ReservationSaved):
            continue
        rec, before = event.reservation, group.holds.get(event.reservation.reservation_id)
        # A part never expires by itself: it expires with its order, whose own record this rule judges.
        if (before is not None and before.state == State.HELD and rec.state == State.EXPIRED
                and 0 < entry.ts < before.expires_at and not _given_up(rec)
                and orders.order_of(rec.reservation_id) is None):
            raise Violation(f"R3: {rec.reservation_id} expired by group {shard}'s entry {seq} stamped {entry.ts}, "
                            f"{before.expires_at - entry.ts} ms before its expiry {before.expires_at}")
        if rec.is_order and before is not None:
            _decided(rec, before, group)
        part_of = orders.order_of(rec.reservation_id)  # an order's own record holds no units: its parts do
        freed = _freed(before, rec) if before is not None and before.state == State.CONFIRMED else 0
        if freed > 0 and not rec.is_order and (part_of or rec.reservation_id) not in released:
            said = f"released {freed} committed units by group {shard}'s entry {seq}"
            if part_of is None:
                raise Violation(f"R3/Q3: {rec.reservation_id!r} {said} though no Release of it was sent")
            group.freed[rec.reservation_id] = said  # judged by its order's record (``_check_freed``)
        group.holds[rec.reservation_id] = rec


def _decided(rec: Reservation, before: Reservation, group: _GroupStamps) -> None:
    """Notes in ``group.undecided`` how an order's record ``rec`` decided it over ``before``, its Reserve pending:
    refused, or given up (``_given_up``); another decision (held, or decided again confirmed) clears it."""
    if before.pending is None or before.pending.kind != OrderStep.RESERVE:
        return
    if rec.pending is not None and rec.pending.kind == OrderStep.RESERVE:
        return  # still undecided
    how = {State.REJECTED: "refused", State.EXPIRED: "given up" if _given_up(rec) else None}.get(State(rec.state))
    if how is None:
        group.undecided.pop(rec.reservation_id, None)
    else:
        group.undecided[rec.reservation_id] = how


def _freed(before: Reservation, after: Reservation) -> int:
    """The units ``after`` released that ``before`` had not."""
    return sum(line.released for line in after.lines) - sum(line.released for line in before.lines)


def _given_up(rec: Reservation) -> bool:
    """An order given up whole (``reservation/_orders.py abandoned``: Redis lost a part it granted, or a
    part's id was taken by other content) expires at once by design, whatever its TTL: every line
    left ungranted, not attempted. Not a TTL counted on a wrong clock."""
    return rec.is_order and all(line.outcome == Outcome.NOT_ATTEMPTED and not line.granted for line in rec.lines)
