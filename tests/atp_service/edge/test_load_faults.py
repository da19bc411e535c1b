"""LoadCounts and RecordEvents whose Redis writes wait (redis-server stopped with SIGSTOP) past the
caller's deadline or the service's Redis timeout: a retry of the same block loads each row once, and a
restarted service holds what was answered (R7, R8, E8, E10)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.edge.test_deadline_faults import _answered
from tests.conftest import services_on

SKUS = [f"sku-{n}" for n in range(16)]  # spread over every shard


def _block(now_ms: int) -> tuple[pb.LoadCountsRequest, dict[tuple[str, str], int]]:
    """Each SKU counted at S1 (and sku-0 twice, the later count winning: a row recorded one by one)."""
    rows = [(n, 10 + n, now_ms - 60_000) for n in range(len(SKUS))] + [(0, 7, now_ms - 30_000)]
    request = pb.LoadCountsRequest(
        source="erp", skus=SKUS, locations=["S1"],
        sku_index=np.array([r[0] for r in rows], dtype="<u4").tobytes(),
        location_index=np.zeros(len(rows), dtype="<u4").tobytes(),
        on_hand=np.array([r[1] for r in rows], dtype="<i8").tobytes(),
        as_of=np.array([r[2] for r in rows], dtype="<i8").tobytes())
    expected = {(sku, "S1"): 10 + n for n, sku in enumerate(SKUS)} | {("sku-0", "S1"): 7}
    return request, expected


async def _on_hand(client: Any) -> dict[tuple[str, str], int]:
    got = await client.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku=sku, location="S1") for sku in SKUS]), timeout=20)
    return {(p.sku, p.location): p.on_hand for p in got.positions}


@pytest.mark.parametrize("wait_s", [0.2, 3.0])
async def test_a_block_whose_writes_wait_past_its_deadline_or_the_redis_timeout_loads_each_row_once(
        tmp_path: Path, wait_s: float) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start()
            request, expected = _block(int(time.time() * 1000))
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await client.stub.LoadCounts(request, timeout=wait_s)
                assert ended.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            again = await _answered(client.stub.LoadCounts, request)
            assert again.applied + again.absorbed + again.duplicate == len(SKUS) + 1, again
            assert again.quarantined == again.invalid == 0, again
            assert await _on_hand(client) == expected
            third = await _answered(client.stub.LoadCounts, request)
            assert third.duplicate == len(SKUS) + 1, third
            await service.stop(grace_s=0.1)
            _restarted, client2 = await start()
            assert await _on_hand(client2) == expected
