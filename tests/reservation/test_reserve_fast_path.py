"""Differential: a Reserve of one line decided by ``reserve``'s fast paths (no plans: on a ledger its
``reserve_new``, one lookup of the position and the record saved without ``emit``'s dispatch; on
another view ``_reserve_line``) answers and changes state exactly as the general path does
(``_reserve_planned`` over a view that reads ``quantities().available`` and makes every change through
``Ledger.emit``): the same record or refusal, the same positions, records, holds, expiry heap and open
events, the same log entry, the same state after a rollback or a sealed batch reverted (R7's undo),
and a replay of the entries gives the live state (E10). Generated sequences over safety stock,
negative ``available`` (late sales, counts), positions not yet seeded, ``allow_partial``, groups,
retries with the same or other content (R5), TTL and expiry."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from reservation import (
    DomainError,
    Fact,
    FactKind,
    FactOutcome,
    Ledger,
    Limits,
    LineRequest,
    LogEntry,
    Quantities,
    Reservation,
    ReserveCommand,
    confirm,
    expire,
    release,
    reserve,
)
from reservation._allocate import GroupPolicy
from reservation._events import HoldMoved, ReservationSaved, encode_entry
from reservation._reserve import _reserve_planned, same_content

LIMITS = Limits()
SKUS = ["A", "B"]
LOCS = ["S1", "S2", "S3"]
GROUPS = {"G": ("S1", "S2")}


class _General:
    """The general path's view of a ledger: ``available`` read through ``quantities`` (as ``_plan``
    read it before the fast path), every change made through ``Ledger.emit``."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def quantities(self, sku: str, location: str) -> Quantities:
        return self._ledger.quantities(sku, location)

    def available(self, sku: str, location: str) -> int:
        return self._ledger.quantities(sku, location).available

    def reservation(self, reservation_id: str) -> Reservation | None:
        return self._ledger.reservation(reservation_id)

    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        self._ledger.emit(HoldMoved(sku, location, d_reserved, d_committed))

    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None:
        self._ledger.ship(sku, location, quantity, at, ref)

    def save(self, reservation: Reservation) -> None:
        self._ledger.emit(ReservationSaved(reservation))

    def record_fact(self, fact: Fact) -> tuple[FactOutcome, str]:
        return self._ledger.record_fact(fact)


def general_reserve(ledger: Ledger, cmd: ReserveCommand, now: int,
                    groups: GroupPolicy | None) -> tuple[Reservation, bool]:
    view = _General(ledger)
    existing = view.reservation(cmd.reservation_id)
    if existing is not None:
        same_content(existing, cmd)
        return existing, True
    return _reserve_planned(view, cmd, now, groups), False


def outcome(call: object) -> object:
    try:
        return ("ok", msgspec.msgpack.encode(call()))  # type: ignore[operator]
    except DomainError as exc:
        return ("refused", type(exc).__name__, str(exc), getattr(exc, "field", None))


def state(ledger: Ledger) -> tuple[object, ...]:
    positions = sorted(ledger.store.items())
    holds = {(s, loc): sorted(r.reservation_id for r in ledger.holds_at(s, loc)) for s in SKUS for loc in LOCS}
    return (positions, msgspec.msgpack.encode(sorted(ledger.reservations.items())), ledger.live_reservations,
            sorted(ledger._expiry), holds, msgspec.msgpack.encode(ledger.open_events), ledger.clock)


rid = st.sampled_from([f"r{i}" for i in range(5)])
position = st.tuples(st.sampled_from(SKUS), st.sampled_from([*LOCS, "G"]))
action = st.one_of(
    st.tuples(st.just("reserve"), rid, position, st.integers(1, 8), st.booleans(),
              st.sampled_from([0, 30, 60]), st.sampled_from(["o1", "o2"]), st.sampled_from(["web", "app"])),
    st.tuples(st.just("fact"), st.sampled_from([FactKind.RECEIPT, FactKind.SALE, FactKind.ADJUST, FactKind.COUNT]),
              st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS)), st.integers(-6, 9), st.integers(0, 3)),
    st.tuples(st.just("safety"), st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS)), st.integers(0, 7)),
    st.tuples(st.just("confirm"), rid),
    st.tuples(st.just("release"), rid),
    st.tuples(st.just("tick"), st.integers(0, 70_000)),
    st.tuples(st.just("end"), st.sampled_from(["commit", "commit", "rollback", "revert"])),
)


PATHS = ("ledger", "view", "general")
"""``reserve`` over the ledger itself (its ``reserve_new``), ``reserve`` over another view (``_reserve_line``),
and the general path, which the others must agree with."""


def step(ledger: Ledger, path: str, act: tuple, now: int, n: int, groups: GroupPolicy | None) -> object:  # type: ignore[type-arg]
    kind = act[0]
    view = ledger if path == "ledger" else _General(ledger)
    if kind == "reserve":
        _, r, (sku, loc), qty, partial, ttl, order_ref, channel = act
        ttl_ms = (ttl or 60) * 1000
        command = ReserveCommand(r, order_ref, channel, (LineRequest(sku, loc, qty),), ttl_ms, partial, not ttl)
        if path == "general":
            return outcome(lambda: general_reserve(ledger, command, now, groups))
        return outcome(lambda: reserve(view, command, now, groups))
    if kind == "fact":
        _, fkind, (sku, loc), qty, back = act
        if fkind != FactKind.ADJUST:
            qty = abs(qty) if fkind == FactKind.COUNT else abs(qty) or 1
        elif qty == 0:
            qty = -1
        return ledger.record_fact(Fact(f"e{n}", "pos", fkind, sku, loc, qty, now - back))
    if kind == "safety":
        _, (sku, loc), qty = act
        ledger.set_safety_stock(sku, loc, qty)
        return None
    if kind == "confirm":
        return outcome(lambda: confirm(view, act[1], now))
    if kind == "release":
        return outcome(lambda: release(view, act[1], (), "", now, LIMITS))
    if kind == "tick":
        return [outcome(lambda r=r: expire(view, r, now)) for r in ledger.due(now)]
    if act[1] == "rollback":
        ledger.rollback()
        return None
    if act[1] == "revert":  # sealed, its append failed (R7): taken back whole
        _, undo, _ = ledger.seal(now)
        ledger.revert(undo)
        return None
    return ledger.commit(now)


@settings(max_examples=600, deadline=None)
@given(steps=st.lists(action, max_size=60), grouped=st.booleans(),
       seed=st.lists(st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS), st.integers(0, 6)), max_size=4))
def test_one_line_reserves_answer_and_change_state_as_the_general_path_R1_R2_R5(
        steps: list, grouped: bool, seed: list) -> None:  # type: ignore[type-arg]
    groups = GroupPolicy(GROUPS) if grouped else None
    ledgers = {path: Ledger(0, LIMITS) for path in PATHS}
    entries: dict[str, list[LogEntry]] = {path: [] for path in PATHS}
    for path, ledger in ledgers.items():
        for i, (sku, loc, qty) in enumerate(seed):
            if qty:
                ledger.record_fact(Fact(f"seed{i}", "wms", FactKind.RECEIPT, sku, loc, qty, 1_000))
        entries[path].append(ledger.commit(1_000))
    now = 10_000
    for n, act in enumerate(steps):
        if act[0] == "tick":
            now += act[1]
        answers = {path: step(ledger, path, act, now, n, groups) for path, ledger in ledgers.items()}
        if isinstance(answers["general"], LogEntry):
            for path in ledgers:
                entries[path].append(answers[path])  # type: ignore[arg-type]
            answers = {path: encode_entry(entry) for path, entry in answers.items()}  # type: ignore[arg-type]
        for path in ("ledger", "view"):
            assert answers[path] == answers["general"], (path, n, act)
            assert state(ledgers[path]) == state(ledgers["general"]), (path, n, act)
    for path, ledger in ledgers.items():
        entries[path].append(ledger.commit(now))
    for path in ("ledger", "view"):
        assert [encode_entry(e) for e in entries[path]] == [encode_entry(e) for e in entries["general"]], path
    replayed = Ledger(0, LIMITS)  # E10: the fast path's entries replayed give its live state
    for entry in entries["ledger"]:
        replayed.replay(entry)
    live, again = state(ledgers["ledger"]), state(replayed)
    assert [again[i] for i in (0, 1, 2, 4)] == [live[i] for i in (0, 1, 2, 4)]  # the expiry heap is lazy
