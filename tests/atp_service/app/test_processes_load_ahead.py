"""E7 against E8 for ``LoadCounts`` over several processes (``ownership = leases``): a row stamped ahead of
the clock of the process that took the call, of a group another process owns, gets the outcome its COUNT fact
gets from ``RecordEvents`` at that same process (SEMANTICS E8: the answer never depends on how positions are
spread over processes) - a duplicate where its owner loaded it already (by a process whose clock ran ahead)."""

from __future__ import annotations

import numpy as np

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from tests.atp_service.app.test_processes import group_of, owned, processes, start_process
from tests.conftest import ServiceFactory
from tests.ports import held_port

T = 1_700_000_000_000
AHEAD_MS = 10 * 60_000  # past the allowed skew (5 min)
AS_OF = T + AHEAD_MS - 60_000
__all__ = ["start_process"]  # the fixture, used here by name


def _block(skus: list[str]) -> pb.LoadCountsRequest:
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["DC"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.full(n, 4, "<i8").tobytes(), as_of=np.full(n, AS_OF, "<i8").tobytes())


def _facts(service: AtpService, outcome: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "atp_facts_total", {"origin": "load", "kind": "COUNT", "outcome": outcome})
    return value or 0.0


async def test_a_row_loaded_by_a_clock_ahead_is_a_duplicate_from_a_process_not_owning_its_group_E7_E8(
        start_process: ServiceFactory) -> None:
    """Defect: the process taking the call asked its own shards only; the row's group another process's, it
    was refused INVALID "as_of ahead" (and counted ``moved``, sent nowhere), where RecordEvents at the same
    process sends the same COUNT fact to the owner, which answers DUPLICATE."""
    ahead, client = await start_process(clock=ManualClock(T + AHEAD_MS), port=held_port(), host="127.0.0.1")
    skus = [f"k{i}" for i in range(8)]
    assert (await client.load_counts(_block(skus))).applied == len(skus)
    await ahead.stop(grace_s=0.1)
    running = await processes(lambda **kw: start_process(clock=ManualClock(T), **kw), 2)
    (here, at_here), (there, _) = running
    theirs = [s for s in skus if group_of(s) in owned(there)]
    assert theirs, "a SKU of the other process's groups"
    fact = pb.Fact(event_id=f"count@{AS_OF}", source="erp", kind=pb.FACT_KIND_COUNT, sku=theirs[0], location="DC",
                   quantity=4, event_time=timestamp(AS_OF))
    (as_fact,) = await at_here.record_events([fact])
    assert as_fact.outcome == pb.FACT_OUTCOME_DUPLICATE
    again = await at_here.load_counts(_block(skus))
    assert (again.duplicate, again.invalid) == (len(skus), 0), again
    assert _facts(here, "moved") == 0
    never = await at_here.load_counts(_block(["never-" + s for s in theirs]))  # as far ahead, never loaded: E7
    assert never.invalid == len(theirs), never
