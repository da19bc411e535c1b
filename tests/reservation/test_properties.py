"""Property: random command sequences never hold more than was granted, and never oversell (Q5, R2-R4)."""

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
    LedgerSnapshot,
    Limits,
    LineRequest,
    State,
    confirm,
    expire,
    fulfill,
    release,
    reserve,
)
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.reservation.helpers import LIMITS, cmd, ledger_with

SKUS = ["A", "B", "C"]
LOCS = ["S1", "S2"]
position = st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS))
line = st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS), st.integers(1, 6))
rid = st.sampled_from([f"r{i}" for i in range(8)])
action = st.one_of(
    st.tuples(st.just("reserve"), rid, st.lists(line, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("confirm"), rid),
    st.tuples(st.just("release"), rid, st.lists(line, max_size=2)),
    st.tuples(st.just("fulfill"), rid, st.lists(line, max_size=2)),
    st.tuples(st.just("tick"), st.integers(0, 40_000)),
)


def apply(ledger: Ledger, step: tuple, now: int, n: int) -> int:  # type: ignore[type-arg]
    kind = step[0]
    try:
        if kind == "reserve":
            reserve(ledger, cmd(step[1], *step[2], ttl=30, partial=step[3]), now)
        elif kind == "confirm":
            confirm(ledger, step[1], now)
        elif kind in ("release", "fulfill"):
            lines = tuple(LineRequest(*x) for x in step[2])
            op = release if kind == "release" else fulfill
            op(ledger, step[1], lines, f"op{n}" if lines else "", now, LIMITS)
        else:
            now += step[1]
            for due in ledger.due(now):
                expire(ledger, due, now)
    except DomainError:
        pass
    return now


def check_invariants(ledger: Ledger, stock: dict[tuple[str, str], int]) -> None:
    held: dict[tuple[str, str], int] = {}
    committed: dict[tuple[str, str], int] = {}
    shipped: dict[tuple[str, str], int] = {}
    for rec in ledger.reservations.values():
        for ln in rec.lines:
            key = (ln.sku, ln.location)
            assert ln.held + ln.committed + ln.fulfilled + ln.released <= ln.granted, rec
            assert ln.held >= 0 and ln.committed >= 0
            if rec.state != State.HELD:
                assert ln.held == 0, rec
            held[key] = held.get(key, 0) + ln.held
            committed[key] = committed.get(key, 0) + ln.committed
            shipped[key] = shipped.get(key, 0) + ln.fulfilled
    for sku in SKUS:
        for loc in LOCS:
            q = ledger.quantities(sku, loc)
            key = (sku, loc)
            assert q.reserved == held.get(key, 0)
            assert q.committed == committed.get(key, 0)
            assert q.on_hand == stock.get(key, 0) - shipped.get(key, 0)
            assert q.available >= 0, "oversold without any late fact"
            indexed = {rec.reservation_id for rec in ledger.holds_at(sku, loc)}
            assert indexed == {rec.reservation_id for rec in ledger.reservations.values()
                               if any((ln.sku, ln.location) == key and ln.outstanding for ln in rec.lines)}


@settings(max_examples=300, deadline=None)
@given(stock=st.dictionaries(position, st.integers(0, 12)), steps=st.lists(action, max_size=40))
def test_random_sequences_never_exceed_what_was_granted(stock: dict[tuple[str, str], int], steps: list) -> None:  # type: ignore[type-arg]
    ledger = ledger_with(stock)
    entries = []
    now = 10_000
    for n, step in enumerate(steps):
        now = apply(ledger, step, now, n)
        entries.append(ledger.commit(now))
        check_invariants(ledger, stock)
    replayed = ledger_with(stock)
    for entry in entries:
        replayed.replay(entry)
    assert list(replayed.store.items()) == list(ledger.store.items())  # E10
    assert replayed.reservations == ledger.reservations
    check_invariants(replayed, stock)


# -- E1/E3: facts stamped alike, from several sources, in any arrival order ---------------------------
fact_fields = st.tuples(
    st.sampled_from(["pos", "wms", "erp"]),  # source
    st.sampled_from(["e1", "e2"]),  # event_id: shared across sources and positions on purpose (E8)
    st.sampled_from([FactKind.SALE, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT]),
    st.sampled_from([("A", "S1"), ("B", "S1")]),
    st.integers(0, 9),
    st.integers(1, 3),  # event_time: few values, so ties are the rule
)


def distinct_facts(fields: list[tuple]) -> list[Fact]:  # type: ignore[type-arg]
    """One fact per identity (source, event_id) at a position (E8): a second payload for an identity
    is a conflict, decided by arrival by design, so it is outside E3."""
    out: dict[tuple[str, str, str, str], Fact] = {}
    for source, event_id, kind, (sku, loc), qty, t in fields:
        if kind == FactKind.ADJUST:
            qty = qty - 5 or 1
        elif kind != FactKind.COUNT:
            qty = qty or 1
        out.setdefault((source, event_id, sku, loc), Fact(event_id, source, kind, sku, loc, qty, t))
    return list(out.values())


def reference_on_hand(facts: list[Fact]) -> dict[tuple[str, str], int]:
    """E1/E2 by the book: sort by (event_time, rank, source, event_id); counts set, deltas add."""
    out: dict[tuple[str, str], int] = {}
    for f in sorted(facts, key=lambda f: (f.event_time, f.kind == FactKind.COUNT, f.source, f.event_id)):
        key = (f.sku, f.location)
        out[key] = f.quantity if f.kind == FactKind.COUNT else out.get(key, 0) + f.delta
    return out


def fold_in_order(facts: list[Fact]) -> tuple[Ledger, list]:  # type: ignore[type-arg]
    ledger = Ledger(0, Limits())
    entries = []
    for fact in facts:
        ledger.record_fact(fact)
        entries.append(ledger.commit(10))
    return ledger, entries


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(fact_fields, max_size=10), data=st.data())
def test_ties_of_any_sources_give_one_state_in_any_arrival_order_E1_E3(fields: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    facts = distinct_facts(fields)
    shuffled = data.draw(st.permutations(facts))
    first, _ = fold_in_order(facts)
    second, entries = fold_in_order(shuffled)
    assert sorted(first.store.items()) == sorted(second.store.items())  # rows follow arrival; values must not
    expected = reference_on_hand(facts)
    for sku, loc in expected:
        assert first.history(sku, loc) == second.history(sku, loc)
        assert first.quantities(sku, loc).on_hand == expected[(sku, loc)]
    replayed = Ledger(0, Limits())
    for entry in entries:
        replayed.replay(entry)
    assert list(replayed.store.items()) == list(second.store.items())  # E10


# -- E9: compaction between batches never changes an answer ----------------------------------------
timed_fields = st.tuples(
    st.sampled_from(["pos", "wms"]),
    st.sampled_from([FactKind.SALE, FactKind.RECEIPT, FactKind.COUNT]),
    st.sampled_from([("A", "S1"), ("B", "S1")]),
    st.integers(0, 9),
    st.integers(0, 2),  # how far before the newest event time so far: within the grace window
    st.booleans(),  # a maintenance pass after this fact
)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(timed_fields, max_size=30))
def test_compaction_interleaved_with_facts_keeps_every_answer_E9(fields: list) -> None:  # type: ignore[type-arg]
    grace = 3  # the horizon moves with nearly every fact: the sweep frees deltas all the time
    swept, plain = Ledger(0, Limits(fact_grace_ms=grace)), Ledger(0, Limits(fact_grace_ms=MAX_DURATION_MS_CEILING))
    facts, newest = [], 10
    for i, (source, kind, (sku, loc), qty, back, maintain) in enumerate(fields):
        newest += 1
        fact = Fact(f"e{i}", source, kind, sku, loc, qty or 1, newest - back)
        facts.append(fact)
        for ledger in (swept, plain):
            assert ledger.record_fact(fact)[0] != FactOutcome.QUARANTINED  # none late: back < grace
            ledger.commit(10)
        if maintain:
            swept.forget_old_facts()
            swept.compact_some(limit=1)
    expected = reference_on_hand(facts)
    for sku, loc in expected:
        assert swept.quantities(sku, loc).on_hand == plain.quantities(sku, loc).on_hand == expected[(sku, loc)]
    restored = Ledger.restore(0, Limits(fact_grace_ms=grace), msgspec.msgpack.decode(
        msgspec.msgpack.encode(swept.snapshot()), type=LedgerSnapshot))
    assert list(restored.store.items()) == list(swept.store.items())
    assert all(restored.history(*key) == swept.history(*key) for key in expected)
