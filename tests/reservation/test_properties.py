"""Property: random command sequences never hold more than was granted, and never oversell (Q5, R2-R4)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reservation import DomainError, Ledger, LineRequest, State, confirm, expire, fulfill, release, reserve

from .helpers import LIMITS, cmd, ledger_with

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
