"""Q4/Q5 inside int64: every term of `available` is bounded by a named limit."""

from __future__ import annotations

import numpy as np
import pytest

from reservation import (
    Fact,
    FactKind,
    FactOutcome,
    InvalidArgument,
    Ledger,
    Limits,
    Reason,
    check_safety_stock,
    confirm,
    reserve,
    reserve_command,
)
from reservation._limits import MAX_QUANTITY_CEILING

C, R, S = FactKind.COUNT, FactKind.RECEIPT, FactKind.SALE


def fact(event_id: str, kind: FactKind, qty: int, at: int) -> Fact:
    return Fact(event_id, "pos", kind, "A", "S1", qty, at)


@pytest.mark.parametrize("units", [2**63 - 1, 2**63, 1_000_001])
def test_safety_stock_past_max_quantity_names_the_field_and_the_limit_Q4(units: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_safety_stock("quantity", units, Limits())
    assert (err.value.reason, err.value.fields) == (Reason.INVALID_FIELD, ("quantity",))


@pytest.mark.parametrize("units", [-1, True, "3", 2.0])
def test_safety_stock_must_be_a_non_negative_integer_Q4(units: object) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_safety_stock("quantity", units, Limits())
    assert (err.value.reason, err.value.fields) == (Reason.INVALID_FIELD, ("quantity",))


def test_safety_stock_up_to_max_quantity_is_accepted_Q4() -> None:
    assert check_safety_stock("quantity", 0, Limits()) == 0
    assert check_safety_stock("quantity", 7, Limits(max_quantity=7)) == 7


@pytest.mark.parametrize("kw", [{"max_on_hand": 2**53 + 1}, {"max_quantity": 10**11}, {"max_quantity": 0}])
def test_limits_that_could_take_q5_out_of_int64_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="max_on_hand"):
        Limits(**kw)


def test_a_fact_taking_on_hand_past_max_on_hand_is_quarantined_Q1_Q5() -> None:
    ledger = Ledger(0, Limits(max_quantity=10, max_on_hand=20))
    assert [ledger.record_fact(fact(f"r{i}", R, 10, 100 + i))[0] for i in range(2)] == [FactOutcome.APPLIED] * 2
    outcome, reason = ledger.record_fact(fact("r2", R, 1, 102))
    assert outcome == FactOutcome.QUARANTINED and reason.startswith("out of range") and "max_on_hand" in reason
    assert ledger.quantities("A", "S1").on_hand == 20
    assert ledger.record_fact(fact("s", S, 10, 103))[0] == FactOutcome.APPLIED  # inwards is fine
    assert [ledger.record_fact(fact(f"s{i}", S, 10, 104 + i))[0] for i in range(4)] == \
        [FactOutcome.APPLIED] * 3 + [FactOutcome.QUARANTINED]
    assert ledger.quantities("A", "S1").on_hand == -20
    assert ledger.record_fact(fact("r2", R, 1, 102))[0] == FactOutcome.APPLIED  # refused once, not remembered


def test_a_count_rebasing_past_max_on_hand_is_quarantined_and_replay_agrees_E10() -> None:
    """on_hand is a sum over any number of facts: a count can rebase it onto a suffix of deltas
    whose sum no arrival ever showed (here +20 with at most 10 on hand at any arrival)."""
    live = Ledger(0, Limits(max_quantity=10, max_on_hand=15))
    for f in (fact("a", R, 10, 10), fact("b", S, 10, 1), fact("c", R, 10, 11), fact("d", S, 10, 2)):
        assert live.record_fact(f)[0] == FactOutcome.APPLIED
    outcome, _ = live.record_fact(fact("n", C, 0, 5))
    assert outcome == FactOutcome.QUARANTINED and live.quantities("A", "S1").on_hand == 0
    assert live.history("A", "S1") is not None and live.history("A", "S1").count_key is None  # type: ignore[union-attr]
    entry = live.commit(1_000)
    replayed = Ledger(0, Limits())  # replay applies the log, whatever its own limits say
    replayed.replay(entry)
    assert list(replayed.store.items()) == list(live.store.items())
    assert replayed.history("A", "S1") == live.history("A", "S1")


def test_available_at_the_extremes_of_every_limit_stays_exact_in_int64_Q5() -> None:
    """The corner the limits allow: on_hand at -max_on_hand, max_on_hand committed, the largest
    safety stock (2**31 - 1, the ceiling of max_quantity), sums far past int32. The numpy block the
    channels read equals Python's exact integer arithmetic."""
    big = MAX_QUANTITY_CEILING
    limits = Limits(max_quantity=big, max_on_hand=2 * big)
    ledger = Ledger(0, limits)
    for i in range(2):
        ledger.record_fact(fact(f"r{i}", R, big, 100 + i))
        reserve(ledger, reserve_command(reservation_id=f"o{i}", order_ref="", channel="", lines=[("A", "S1", big)],
                                        ttl_seconds=60, allow_partial=False, limits=limits), 1_000)
        confirm(ledger, f"o{i}", 1_000)
    ledger.set_safety_stock("A", "S1", check_safety_stock("quantity", big, limits))
    for i in range(4):
        assert ledger.record_fact(fact(f"s{i}", S, big, 200 + i))[0] == FactOutcome.APPLIED
    assert ledger.record_fact(fact("s4", S, 1, 204))[0] == FactOutcome.QUARANTINED
    q = ledger.quantities("A", "S1")
    exact = q.on_hand - q.reserved - q.committed - q.safety_stock
    assert exact == -5 * big
    store = ledger.store
    block, present = store.available_block(store.rows(["A"]), store.columns(["S1"]))
    assert present.all() and block.dtype == np.int64 and int(block[0, 0]) == exact == store.available("A", "S1")
