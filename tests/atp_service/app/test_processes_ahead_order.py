"""E8 over several processes (``ownership = leases``): facts (and ``LoadCounts`` rows) sent on to their group's
owner reach it in the call's order - those stamped ahead of the clock of the process that took the call (E7 by
its clock, judged by the owner's) included. They went after every other fact of that owner, so the owner decided
them out of order: an older count answered applied instead of absorbed (E5), a fact late by the call's order
(E6) applied. SEMANTICS E8: the answer never depends on how positions are spread over processes."""

from __future__ import annotations

import itertools

import numpy as np

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.app.test_processes import Process, group_of, owned, processes, start_process
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
MINUTE = 60_000
OWNER_AHEAD_MS = 10 * MINUTE  # the owner's clock: ahead of the other process's by more than the skew (5 min)
AHEAD = T + 8 * MINUTE  # ahead of the process taking the call (E7 there), not of the owner's clock
__all__ = ["start_process"]  # the fixture, used here by name


async def _behind_and_ahead(start_process: ServiceFactory) -> tuple[Process, Process]:
    """Two processes: the first's clock at T, the second's OWNER_AHEAD_MS ahead."""
    clocks = iter([ManualClock(T), ManualClock(T + OWNER_AHEAD_MS)])
    running = await processes(lambda **kw: start_process(clock=next(clocks), **kw), 2)
    behind, ahead = running
    assert behind[0].clock.now_ms() == T and ahead[0].clock.now_ms() == T + OWNER_AHEAD_MS
    return behind, ahead


def _skus_owned_by(process: Process, n: int) -> list[str]:
    theirs = (s for s in (f"k{i}" for i in itertools.count()) if group_of(s) in owned(process[0]))
    return [next(theirs) for _ in range(n)]


def _rows(sku: str, rows: list[tuple[int, int]]) -> pb.LoadCountsRequest:
    """A block of counts of one position, (on_hand, as_of) per row in this order."""
    on_hand, as_of = zip(*rows, strict=True)
    return pb.LoadCountsRequest(source="erp", skus=[sku], locations=["DC"], sku_index=bytes(4 * len(rows)),
                                location_index=bytes(4 * len(rows)), on_hand=np.array(on_hand, "<i8").tobytes(),
                                as_of=np.array(as_of, "<i8").tobytes())


def _count(sku: str, quantity: int, at: int) -> pb.Fact:
    return pb.Fact(event_id=f"count@{at}", source="erp", kind=pb.FACT_KIND_COUNT, sku=sku, location="DC",
                   quantity=quantity, event_time=timestamp(at))


async def test_load_rows_stamped_ahead_here_reach_their_owner_in_the_block_s_order_E8(
        start_process: ServiceFactory) -> None:
    """Defect: a row stamped ahead of the receiving process's clock went to its owner after every other row of
    that owner's part. The owner recorded a count stamped T (second in the block) before the one stamped
    T+8 min (first): applied both, where in the block's order - and at the owner directly - the older one is
    absorbed (E5)."""
    (_, at_behind), owner = await _behind_and_ahead(start_process)
    at_owner = owner[1]
    sku, direct = _skus_owned_by(owner, 2)
    rows = [(4, AHEAD), (7, T)]
    told = await at_owner.load_counts(_rows(direct, rows))  # the owner taking the same block itself
    assert (told.applied, told.absorbed, told.invalid) == (1, 1, 0), told
    sent_on = await at_behind.load_counts(_rows(sku, rows))
    assert (sent_on.applied, sent_on.absorbed, sent_on.invalid) == (1, 1, 0), sent_on
    (position,) = await at_owner.availability([(sku, "DC")])
    assert position.on_hand == 4


async def test_facts_stamped_ahead_here_reach_their_owner_in_the_call_s_order_E8(
        start_process: ServiceFactory) -> None:
    """Defect: RecordEvents sent a fact stamped ahead of the receiving process's clock to its owner after every
    other fact of that owner: the older count second in the call was applied, not absorbed (E5)."""
    (_, at_behind), owner = await _behind_and_ahead(start_process)
    at_owner = owner[1]
    sku, direct = _skus_owned_by(owner, 2)
    told = await at_owner.record_events([_count(direct, 4, AHEAD), _count(direct, 7, T)])
    assert [r.outcome for r in told] == [pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_ABSORBED]
    sent_on = await at_behind.record_events([_count(sku, 4, AHEAD), _count(sku, 7, T)])
    assert [r.outcome for r in sent_on] == [pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_ABSORBED], sent_on
