"""``max_positions_per_shard`` decided once, in the log (E10): a replay reaches the state the live
ledger had whatever bound the replaying ledger is given — facts admitted stay admitted, refused
ones stay refused — so an operator may change the bound across a restart."""

from __future__ import annotations

import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, Limits

T = 1_700_000_000_000


def _fact(i: int, sku: str) -> Fact:
    return Fact(f"e{i}", "pos", FactKind.RECEIPT, sku, "L1", 3, T + i)


def _live(bound: int) -> tuple[Ledger, list[FactOutcome], list]:
    ledger = Ledger(0, Limits(max_positions_per_shard=bound))
    outcomes = [ledger.record_fact(_fact(i, f"S{i % 6}"))[0] for i in range(12)]
    return ledger, outcomes, [ledger.commit(T + 100)]


def _held(ledger: Ledger) -> dict[str, int]:
    return {f"S{i}": ledger.quantities(f"S{i}", "L1").on_hand for i in range(6)}


def test_facts_naming_new_positions_past_the_bound_are_quarantined_and_known_ones_apply() -> None:
    ledger, outcomes, _ = _live(4)
    # S0..S3 made (and their second receipts applied); S4, S5 refused both times.
    assert outcomes == [FactOutcome.APPLIED] * 4 + [FactOutcome.QUARANTINED] * 2 \
        + [FactOutcome.APPLIED] * 4 + [FactOutcome.QUARANTINED] * 2
    assert len(ledger.store) == 4
    assert _held(ledger) == {"S0": 6, "S1": 6, "S2": 6, "S3": 6, "S4": 0, "S5": 0}


@pytest.mark.parametrize("replay_bound", [1, 4, 100])
def test_a_replay_reaches_the_live_state_whatever_its_bound_E10(replay_bound: int) -> None:
    ledger, _, log = _live(4)
    again = Ledger(0, Limits(max_positions_per_shard=replay_bound))
    for entry in log:
        again.replay(entry)
    assert len(again.store) == len(ledger.store) == 4
    assert _held(again) == _held(ledger)
