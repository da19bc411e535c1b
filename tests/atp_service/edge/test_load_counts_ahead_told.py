"""LoadCounts refused in part: the rows it says were loaded and not (``rows_loaded``, ``rows_not_loaded``) count
the rows stamped ahead of this process's clock (E7) that their shard judged, as any other of the block's rows - a
duplicate (E8, applied already by a clock that ran ahead) among the loaded, one its shard could not judge among those
not loaded - never more loaded than the block's valid rows, nor a negative number not loaded. Real Redis and gRPC;
the service's clock stepped back by hand (NTP)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import ResourceExhausted
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
AHEAD_MS = 10 * 60_000  # past the allowed skew (5 min)


def _block(skus: list[str], at: list[int]) -> pb.LoadCountsRequest:
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["L1"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.full(n, 5, dtype="<i8").tobytes(), as_of=np.array(at, dtype="<i8").tobytes())


async def test_a_row_ahead_loaded_already_is_counted_among_the_block_s_rows_when_a_part_is_refused(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the refusal's row counts took the block's valid rows as ``len(block)``, which leaves out the rows
    ahead of the clock judged by their shard (``_loaded_ahead``), while ``rows_loaded`` counts their duplicates: a
    block of an ahead duplicate and a refused row was told "1 of the block's 1 valid rows were loaded" and
    ``rows_not_loaded`` 0 - the refused row said loaded."""
    clock = ManualClock(T + AHEAD_MS)
    service, client = await start_service(clock, shards=2)
    engine = service.engine
    assert engine is not None
    first = next(f"A{i}" for i in range(100) if engine.place(f"A{i}") == 0)
    second = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") == 1)
    at = T + AHEAD_MS - 60_000
    assert (await client.load_counts(_block([first], [at]))).applied == 1
    clock._now = T  # stepped back: that row is ahead of this process's clock now (E7)

    def shed(_work: Any) -> Any:
        raise ResourceExhausted("mailbox full")

    monkeypatch.setattr(engine.actors[1], "submit", shed)  # shard 1 refuses its part: nothing of it loaded
    refusal = await refused(client.load_counts(_block([first, second], [at, T])))
    monkeypatch.undo()
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal
    told = {k: refusal.metadata.get(k) for k in ("rows_loaded", "rows_applied", "rows_not_loaded")}
    assert told == {"rows_loaded": "1", "rows_applied": "0", "rows_not_loaded": "1"}, refusal.message
    assert "1 of the block's 2 valid rows were loaded" in refusal.message, refusal.message
    again = await client.load_counts(_block([first, second], [at, T]))  # sent again whole (E8)
    assert (again.duplicate, again.applied, len(again.rejected)) == (1, 1, 0)
