"""E1 ties and E8 identity: no answer depends on arrival order or on how positions meet on a shard."""

from __future__ import annotations

from itertools import permutations

import msgspec
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, reserve
from tests.reservation.helpers import cmd

C, R, S = FactKind.COUNT, FactKind.RECEIPT, FactKind.SALE


def fact(event_id: str, source: str, kind: FactKind, qty: int, at: int, sku: str = "A", loc: str = "S1") -> Fact:
    return Fact(event_id, source, kind, sku, loc, qty, at)


def on_hand_in_each_order(facts: list[Fact]) -> set[int]:
    out = set()
    for order in permutations(facts):
        ledger = Ledger(0, Limits())
        for f in order:
            ledger.record_fact(f)
        out.add(ledger.quantities("A", "S1").on_hand)
    return out


def test_counts_of_two_sources_stamped_alike_give_one_answer_E1() -> None:
    # Ordered by source: "pos" < "wms", so the WMS count is the latest whatever arrives first.
    assert on_hand_in_each_order([fact("c1", "wms", C, 10, 500), fact("c1", "pos", C, 20, 500)]) == {10}


def test_a_count_tied_with_same_source_counts_orders_by_event_id_E1() -> None:
    assert on_hand_in_each_order([fact("c2", "pos", C, 7, 500), fact("c1", "pos", C, 3, 500)]) == {7}


def test_deltas_stamped_with_a_count_are_absorbed_by_it_whatever_their_source_E1() -> None:
    facts = [fact("c", "pos", C, 10, 500), fact("r", "wms", R, 4, 500), fact("s", "aaa", S, 1, 501)]
    assert on_hand_in_each_order(facts) == {9}


def test_tied_counts_replay_and_restore_to_the_live_state_E10() -> None:
    live = Ledger(0, Limits())
    entries = []
    for f in (fact("c1", "wms", C, 10, 500), fact("c1", "pos", C, 20, 500), fact("r", "pos", R, 2, 500)):
        live.record_fact(f)
        entries.append(live.commit(1_000))
    replayed = Ledger(0, Limits())
    for entry in entries:
        replayed.replay(entry)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()), type=LedgerSnapshot)
    restored = Ledger.restore(0, Limits(), snap)
    for ledger in (replayed, restored):
        assert ledger.history("A", "S1") == live.history("A", "S1")
        assert list(ledger.store.items()) == list(live.store.items())
    assert live.quantities("A", "S1").on_hand == 10


def test_a_shipment_sorts_before_facts_stamped_in_the_same_ms_E1() -> None:
    """The service's own deltas (fulfilment, R4) sort as the empty source: before every fact of
    their ms, so a count stamped then includes them, and live equals replay (E10)."""
    from reservation import confirm, fulfill

    live = Ledger(0, Limits())
    live.record_fact(fact("r", "pos", R, 10, 100))
    reserve(live, cmd("o1", ("A", "S1", 3)), 1_000)
    confirm(live, "o1", 1_000)
    entries = [live.commit(1_000)]
    fulfill(live, "o1", (), "", 2_000, Limits())  # ships 3 at service time 2000
    live.record_fact(fact("c", "pos", C, 4, 2_000))  # a count stamped in that ms already saw it
    entries.append(live.commit(2_000))
    assert live.quantities("A", "S1").on_hand == 4
    replayed = Ledger(0, Limits())
    for entry in entries:
        replayed.replay(entry)
    assert list(replayed.store.items()) == list(live.store.items())
    assert replayed.history("A", "S1") == live.history("A", "S1")


@pytest.mark.parametrize("other", [("B", "S1"), ("A", "S2")])
def test_lines_of_one_receipt_at_other_positions_are_all_applied_on_one_shard_E8(other: tuple[str, str]) -> None:
    """A till receipt's lines share one id across SKUs/locations: identity is per position, so a
    shard holding both positions applies both, as two shards would."""
    ledger = Ledger(0, Limits())
    first = fact("receipt-9", "pos", S, 1, 100)
    second = fact("receipt-9", "pos", S, 2, 100, sku=other[0], loc=other[1])
    assert ledger.record_fact(first)[0] == FactOutcome.APPLIED
    assert ledger.record_fact(second)[0] == FactOutcome.APPLIED
    assert ledger.record_fact(second)[0] == FactOutcome.DUPLICATE
    assert ledger.quantities(*other).on_hand == -2


def test_same_identity_at_one_position_with_another_payload_is_a_conflict_E8() -> None:
    ledger = Ledger(0, Limits())
    ledger.record_fact(fact("e", "pos", S, 1, 100))
    outcome, reason = ledger.record_fact(fact("e", "pos", S, 5, 100))
    assert outcome == FactOutcome.QUARANTINED and "conflict" in reason
    assert ledger.record_fact(fact("e", "wms", S, 5, 100))[0] == FactOutcome.APPLIED  # another source


def test_dedupe_survives_replay_and_restore_per_position_E8_E10() -> None:
    live = Ledger(0, Limits())
    live.record_fact(fact("e", "pos", S, 1, 100))
    live.record_fact(fact("e", "pos", S, 1, 100, sku="B"))
    entry = live.commit(1_000)
    replayed = Ledger(0, Limits())
    replayed.replay(entry)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()), type=LedgerSnapshot)
    for ledger in (replayed, Ledger.restore(0, Limits(), snap)):
        assert ledger.record_fact(fact("e", "pos", S, 1, 100, sku="B"))[0] == FactOutcome.DUPLICATE
        assert ledger.record_fact(fact("e", "pos", S, 9, 100, sku="B"))[0] == FactOutcome.QUARANTINED
        assert ledger.record_fact(fact("e", "pos", S, 1, 100, sku="C"))[0] == FactOutcome.APPLIED


def test_the_dedupe_key_is_one_str_E8() -> None:
    """One str per remembered fact keeps the map out of the collector's view (see test_ledger_memory)."""
    from reservation._ledger import fact_key

    key = fact_key(fact("e", "pos", S, 1, 100, sku="B", loc="L"))
    assert isinstance(key, str) and key != fact_key(fact("e", "pos", S, 1, 100, sku="B", loc="M"))
