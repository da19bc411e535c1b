"""E8, E10: when a restored ledger forgets. A snapshot does not carry the cadence of the forgetting passes (at most one
each time the horizon moves a sixteenth of the grace, ``Upkeep._pass_every``): a ledger restored from it forgets, on
its first pass, identities stamped before the horizon that the ledger it was taken from keeps until its next. Both
forget only what is stamped before the horizon they share (stream time less the grace): E8's window is covered by
both. What differs is one answer, never a position: a resend of such a fact is a duplicate where it is remembered,
late (E6, quarantined) where it is forgotten, and applied by neither."""

from __future__ import annotations

import msgspec

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits

T = 1_800_000_000_000
GRACE = 16_000
LIMITS = Limits(fact_grace_ms=GRACE)  # a pass each time the horizon moves 1,000 ms


def receipt(event_id: str, at: int) -> Fact:
    return Fact(event_id, "pos", FactKind.RECEIPT, "A", "S1", 1, at, "")


def applied(ledger: Ledger, *facts: Fact) -> None:
    assert [ledger.record_fact(f)[0] for f in facts] == [FactOutcome.APPLIED] * len(facts), facts
    ledger.commit(T)


def test_a_restored_ledger_forgets_at_its_first_pass_only_what_is_stamped_before_the_shared_horizon_E8_E10() -> None:
    live = Ledger(0, LIMITS)
    gone, old, inside = receipt("gone", T), receipt("old", T + 200), receipt("inside", T + GRACE)
    applied(live, gone, old, inside, receipt("s1", T + GRACE + 100))  # the horizon at T + 100
    assert live.forget_old_facts() == 1  # ``gone``; the next pass once the horizon reaches T + 1,100
    applied(live, receipt("s2", T + GRACE + 500))  # the horizon at T + 500: ``old`` before it
    assert live.forget_old_facts() == 0, "the live ledger waits for its next pass"
    stored = msgspec.msgpack.encode(live.snapshot())
    restored = Ledger.restore(0, LIMITS, msgspec.msgpack.decode(stored, type=LedgerSnapshot))
    assert restored.late_horizon(restored.stream_time) == live.late_horizon(live.stream_time) == T + 500
    assert restored.forget_old_facts() == 1, "the restored one forgets ``old`` at once"

    before = [ledger.store.get("A", "S1") for ledger in (live, restored)]
    assert live.record_fact(old) == (FactOutcome.DUPLICATE, "")
    outcome, reason = restored.record_fact(old)
    assert outcome == FactOutcome.QUARANTINED and reason.startswith("late"), reason
    for ledger in (live, restored):  # inside the window: remembered by both (E8)
        assert ledger.record_fact(inside) == (FactOutcome.DUPLICATE, "")
    assert [ledger.store.get("A", "S1") for ledger in (live, restored)] == before, "a resend applied"
