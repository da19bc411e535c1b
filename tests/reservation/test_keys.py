"""What E8 remembers of a fact: its payload, exactly (equal if and only if the payloads are)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reservation import Fact, FactKind, Limits
from reservation._keys import fact_payload, payload_time

LIMITS = Limits()
KINDS = st.sampled_from(list(FactKind))
QUANTITIES = st.integers(-LIMITS.max_on_hand, LIMITS.max_on_hand)
TIMES = st.integers(1, 2**45 - 1)  # far beyond any epoch ms: the packing is exact up to here
RIDS = st.sampled_from(["", "r1", "r2"])


def fact(kind: FactKind, quantity: int, at: int, rid: str) -> Fact:
    return Fact("e1", "pos", kind, "A", "S1", quantity, at, rid)


@given(KINDS, QUANTITIES, TIMES, RIDS, KINDS, QUANTITIES, TIMES, RIDS)
def test_payloads_are_equal_exactly_when_the_facts_are(k1: FactKind, q1: int, t1: int, r1: str,
                                                       k2: FactKind, q2: int, t2: int, r2: str) -> None:
    a, b = fact(k1, q1, t1, r1), fact(k2, q2, t2, r2)
    assert (fact_payload(a) == fact_payload(b)) == (a == b)
    assert payload_time(fact_payload(a)) == t1


def test_neighbouring_payloads_differ() -> None:
    base = fact(FactKind.ADJUST, -1, 1_800_000_000_000, "")
    others = [fact(FactKind.ADJUST, 0, 1_800_000_000_000, ""), fact(FactKind.ADJUST, -2, 1_800_000_000_000, ""),
              fact(FactKind.COUNT, -1, 1_800_000_000_000, ""), fact(FactKind.ADJUST, -1, 1_800_000_000_001, ""),
              fact(FactKind.ADJUST, -1, 1_800_000_000_000, "r1")]
    assert all(fact_payload(o) != fact_payload(base) for o in others)
