"""What E8 remembers of a fact: its payload (equal if and only if the payloads are: exactly for a
fact naming no reservation, up to a 63-bit digest for one that does)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reservation import Fact, FactKind, Limits
from reservation._keys import fact_payload, payload_time

LIMITS = Limits()
KINDS = st.sampled_from(list(FactKind))
EDGES = [0, 1, -1, 2**53, -(2**53), 2**54 - 1, -(2**54), 2**54, -(2**54) - 1, 2**63 - 1, -(2**63)]
QUANTITIES = st.one_of(st.integers(-LIMITS.max_on_hand, LIMITS.max_on_hand), st.sampled_from(EDGES),
                       st.integers(-(2**63), 2**63 - 1))  # past ±2**54 (no Limits allows it): digested
TIMES = st.one_of(st.integers(1, 2**45 - 1), st.sampled_from(EDGES))  # any int64: the time is kept whole
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


def test_a_payload_naming_a_reservation_is_never_equal_to_one_naming_none() -> None:
    """The digested form sets the top bit of the rest, which the exact form never does."""
    for kind in FactKind:
        for quantity in EDGES[:7]:
            plain = fact_payload(fact(kind, quantity, 5, ""))
            assert plain & (1 << 63) == 0 and fact_payload(fact(kind, quantity, 5, "r1")) & (1 << 63)


def test_every_kind_and_quantity_at_the_edges_of_the_exact_form_packs_apart() -> None:
    quantities = [*EDGES, 2, -2, 2**54 - 2, -(2**54) + 1]
    pairs = [(kind, q, rid) for kind in FactKind for q in quantities for rid in ("", "r1")]
    assert len({fact_payload(fact(kind, q, 5, rid)) for kind, q, rid in pairs}) == len(pairs)
