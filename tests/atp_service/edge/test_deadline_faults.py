"""Unary calls whose deadline passes while their Redis write waits (redis-server stopped with
SIGSTOP): answered DEADLINE_EXCEEDED, the write settled either way, every shard answering after."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.metrics import APPEND_FAILURE_REASONS
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.waiting import answered, taken_past_its_deadline, until

SKUS = [f"sku-{n}" for n in range(16)]  # spread over every shard


def _reserve(rid: str, sku: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, location="S1", quantity=1)])


async def _answered(call: Any, request: Any) -> Any:
    """``call``'s answer, retried while refused retryable (a shard settling its append in doubt: ``answered``)."""
    return await answered(lambda: call(request, timeout=20))


def _an_append_failed(service: Any) -> Callable[[], bool]:
    """Whether an append failed since this was asked: a set-up write a loaded host put in doubt counts too."""
    registry = service.metrics.registry

    def failures() -> float:
        return sum(registry.get_sample_value("atp_log_append_failures_total", {"reason": reason}) or 0
                   for reason in APPEND_FAILURE_REASONS)

    before = failures()
    return lambda: failures() > before


@pytest.mark.parametrize("outlast_redis_timeout", [False, True])
async def test_a_deadline_shorter_than_a_redis_write_settles_and_every_shard_answers_after(
        tmp_path: Path, outlast_redis_timeout: bool) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start()
            await answered(lambda: client.record_events([receipt(f"stock-{sku}", sku, "S1", 10)
                                                         for sku in SKUS]))
            failed = _an_append_failed(service)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                ended = await taken_past_its_deadline(
                    lambda d: client.stub.Reserve(_reserve("late", "sku-0"), timeout=d), service)
                assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                if outlast_redis_timeout:
                    await until(failed, "the append timed out", 20)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            again = await _answered(client.stub.Reserve, _reserve("late", "sku-0"))
            for n, sku in enumerate(SKUS):
                answer = await _answered(client.stub.Reserve, _reserve(f"after-{n}", sku))
                assert not answer.replayed
            got = await client.stub.GetAvailability(pb.GetAvailabilityRequest(
                keys=[pb.PositionKey(sku="sku-0", location="S1")]), timeout=20)
            assert got.positions[0].reserved == 2, again  # "late" once (landed or retried), "after-0"
            await service.stop(grace_s=0.1)
            _restarted, client2 = await start()
            got = await client2.stub.GetAvailability(pb.GetAvailabilityRequest(
                keys=[pb.PositionKey(sku="sku-0", location="S1")]), timeout=20)
            assert got.positions[0].reserved == 2
