"""E7 against E8 for LoadCounts: a row is the COUNT fact ``(source, "count@<as_of>")`` RecordEvents would
take for it and gets the same outcome (SEMANTICS E8). A block loaded by a process whose clock ran ahead,
sent again to the process that owns its groups now (a retry after an answer in doubt), is a duplicate
there, as RecordEvents answers the same COUNT fact - not INVALID "as_of ahead of the service clock",
which tells the caller rows it loaded were refused."""

from __future__ import annotations

import numpy as np

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.intake.test_future_applied import AHEAD_MS, T, leased_client

AS_OF = T + AHEAD_MS - 60_000


def _block(sku: str = "A") -> pb.LoadCountsRequest:
    return pb.LoadCountsRequest(source="erp", skus=[sku], locations=["S1"], sku_index=np.zeros(1, "<u4").tobytes(),
                                location_index=np.zeros(1, "<u4").tobytes(), on_hand=np.full(1, 4, "<i8").tobytes(),
                                as_of=np.full(1, AS_OF, "<i8").tobytes())


async def test_a_block_loaded_by_a_clock_ahead_is_a_duplicate_at_the_owner_as_its_count_fact_is(redis_url: str) -> None:
    async with leased_client(redis_url, T + AHEAD_MS) as client:
        assert (await client.load_counts(_block())).applied == 1
    async with leased_client(redis_url, T) as client:
        fact = pb.Fact(event_id=f"count@{AS_OF}", source="erp", kind=pb.FACT_KIND_COUNT, sku="A", location="S1",
                       quantity=4, event_time=timestamp(AS_OF))
        (as_fact,) = await client.record_events([fact])
        again = await client.load_counts(_block())
        never = await client.load_counts(_block("B"))  # as far ahead, never loaded: still refused (E7)
    assert as_fact.outcome == pb.FACT_OUTCOME_DUPLICATE
    assert (again.duplicate, again.invalid) == (1, 0), again
    assert never.invalid == 1 and never.rejected[0].error.message.startswith("as_of"), never
