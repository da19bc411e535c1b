"""E8's memory tells a resend from a conflict wherever it keeps an identity: in the open map, in the
sealed columns (event time and the payload's rest as numbers of their own), and after a snapshot is
restored; and it forgets by event time, exactly at the horizon."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe
from reservation._dedupe import FactMemory, MemorySnapshot, digest
from reservation._keys import pack_payload
from reservation._limits import MAX_QUANTITY_CEILING
from reservation._restore import RESTORE_SLICE, run_through
from reservation._store import PositionStore

T = 1_800_000_000_000
BIG = MAX_QUANTITY_CEILING  # the largest quantity Limits can be configured to accept
LIMITS = Limits(max_quantity=BIG, max_on_hand=2**53)


def _fact(eid: str, kind: FactKind, sku: str, quantity: int, at: int = T, rid: str = "") -> Fact:
    return Fact(eid, "pos", kind, sku, "S1", quantity, at, rid)


APPLIED = [
    _fact("sale", FactKind.SALE, "A", 3),
    _fact("adjust", FactKind.ADJUST, "B", -5),
    _fact("big", FactKind.RECEIPT, "C", BIG),
    _fact("ship", FactKind.SHIPMENT, "D", 2, rid="r1"),  # its payload's rest is a digest (top bit set)
    _fact("count", FactKind.COUNT, "E", 7, at=T - 10),  # superseded below: remembered here from then on
]
NEWER_COUNT = _fact("count-2", FactKind.COUNT, "E", 9)


def _conflicts(f: Fact) -> list[Fact]:
    """The same identity with another payload: each field of it changed alone."""
    other_kind = FactKind.RETURN if f.kind != FactKind.RETURN else FactKind.RECEIPT
    out = [msgspec.structs.replace(f, quantity=f.quantity - 1), msgspec.structs.replace(f, kind=other_kind),
           msgspec.structs.replace(f, event_time=f.event_time - 1)]
    return [*out, msgspec.structs.replace(f, reservation_id="r2" if f.reservation_id else "r1")]


def _restored(ledger: Ledger) -> Ledger:
    data = msgspec.msgpack.encode(ledger.snapshot())
    return Ledger.restore(0, LIMITS, msgspec.msgpack.decode(data, type=LedgerSnapshot))


def _sealed(ledger: Ledger) -> Ledger:
    ledger.forget_old_facts()  # SEAL_AT is 1: the open map goes into the columns
    assert not ledger.memory.open and len(ledger.memory) == len(APPLIED)
    return ledger


WHERE: dict[str, Callable[[Ledger], Ledger]] = {
    "open": lambda ledger: ledger,
    "sealed": _sealed,
    "open, restored": _restored,
    "sealed, restored": lambda ledger: _restored(_sealed(ledger)),
}


@pytest.mark.parametrize("where", list(WHERE))
def test_a_resend_is_a_duplicate_and_any_other_payload_a_conflict_E8(where: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dedupe, "SEAL_AT", 1)
    ledger = Ledger(0, LIMITS)
    for f in [*APPLIED, NEWER_COUNT]:
        assert ledger.record_fact(f)[0] == FactOutcome.APPLIED, f
    ledger.commit(T)
    before = list(ledger.store.items())
    ledger = WHERE[where](ledger)
    for f in APPLIED:
        assert ledger.record_fact(f)[0] == FactOutcome.DUPLICATE, f
        for other in _conflicts(f):
            outcome, reason = ledger.record_fact(other)
            assert outcome == FactOutcome.QUARANTINED and reason.startswith("conflict"), other
    assert ledger.record_fact(NEWER_COUNT)[0] == FactOutcome.DUPLICATE  # the latest count: by the store's columns
    assert list(ledger.store.items()) == before


def _memory_of(times: list[int]) -> tuple[FactMemory, list[tuple[bytes, int]]]:
    memory = FactMemory(PositionStore())
    remembered = []
    for i, at in enumerate(times):
        key = digest("pos", f"e{i}", "A", "S1")
        payload = pack_payload(at, FactKind.SHIPMENT if i % 2 else FactKind.ADJUST, -i, f"r{i}" if i % 2 else "")
        memory.remember(key, payload)
        remembered.append((key, payload))
    return memory, remembered


def _round_trip(memory: FactMemory) -> FactMemory:
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(memory.snapshot()), type=MemorySnapshot)
    return run_through(FactMemory.restoring(memory.store, snap, RESTORE_SLICE))


def test_forgetting_drops_exactly_the_identities_stamped_before_the_horizon_E8(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dedupe, "SEAL_AT", 4)
    times = [T + (i * 7919) % 100 for i in range(40)] + [2**62, 1]  # arrival order is not time order
    memory, remembered = _memory_of(times)
    unsealed, _ = _memory_of(times)
    assert memory.forget_old(horizon=0, every=1) == 0 and not memory.open  # sealed, nothing before 0
    for keeper in (memory, _round_trip(memory), _round_trip(unsealed)):
        assert [keeper.payload(key, "", "", "", "") for key, _ in remembered] == [p for _, p in remembered]
    horizon = T + 51  # one is stamped at the horizon itself: kept (only what is before it may go)
    assert memory.forget_old(horizon, every=1) == sum(at < horizon for at in times)
    newcomer = digest("pos", "newcomer", "A", "S1")
    memory.remember(newcomer, pack_payload(T, FactKind.SALE, 1, ""))  # open: only sealed rows are forgotten
    memory = _round_trip(memory)
    found = [memory.payload(key, "", "", "", "") for key, _ in remembered]
    assert found == [p if at >= horizon else None for (_, p), at in zip(remembered, times, strict=True)]
    assert memory.payload(newcomer, "", "", "", "") == pack_payload(T, FactKind.SALE, 1, "")

def test_payloads_kept_in_columns_come_back_equal_as_ints_E8(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sealed and snapshot forms split a payload into a signed time and an unsigned rest: both
    halves come back whole at the extremes (a digested rest has its top bit set)."""
    monkeypatch.setattr(_dedupe, "SEAL_AT", 1)
    memory = FactMemory(PositionStore())
    payloads = [pack_payload(at, kind, q, rid) for at in (-(2**63), 1, 2**63 - 1) for kind, q, rid in
                [(FactKind.ADJUST, -(2**54), ""), (FactKind.ADJUST, 2**54 - 1, ""), (FactKind.SHIPMENT, 1, "r")]]
    keys = [digest("pos", str(i), "A", "S1") for i in range(len(payloads))]
    for key, payload in zip(keys, payloads, strict=True):
        memory.remember(key, payload)
    opened = _round_trip(memory)
    assert memory.forget_old(horizon=-(2**63), every=1) == 0 and not memory.open
    for keeper in (opened, memory, _round_trip(memory)):
        assert [keeper.payload(key, "", "", "", "") for key in keys] == payloads
