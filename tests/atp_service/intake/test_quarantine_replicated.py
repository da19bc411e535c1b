"""``redis_wait_replicas``: a fact's quarantine entry (E6: what operators reconcile against) counts as
written only once that many replicas hold it, as the log's entries and the channel feeds' do (R7, WAIT).

Defect: the quarantine stream was written on the reads' client, acknowledged by the primary alone. A
RecordEvents (or LoadCounts) caller was told QUARANTINED while no replica held the entry; a failover to
the replica then lost it for good — the caller, answered, never sent it again, and nothing else wrote it
(an input stream's entry, acknowledged in the same script, is read again: that one heals)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import grpc
import pytest
import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.storage.test_replicated_writes import primary_and_replica
from tests.conftest import test_config as make_config

__all__ = ["primary_and_replica"]  # the fixture, used by name

DAY_MS = 24 * 3600 * 1000


async def test_a_late_fact_is_answered_quarantined_only_once_a_replica_holds_its_quarantine_entry(
        primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis]) -> None:
    primary, replica = primary_and_replica
    assert replica.process is not None
    replica_pid = replica.process.pid
    config = make_config(redis_wait_replicas=1, redis_wait_timeout_ms=200, redis_timeout_s=1.0)
    service = AtpService(config, primary.url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    now = int(time.time() * 1000)
    late = receipt("late", "A", "DC", 3, t=now - 2 * DAY_MS)  # behind stream time - grace (E6)
    try:
        await client.record_events([receipt("stock", "A", "DC", 10, t=now - 1000)])
        assert service.desk is not None
        quarantine = service.desk.quarantine
        write = quarantine.write

        async def replica_gone_first(*args: Any, **kwargs: Any) -> Any:
            # The decision's log entry went before, confirmed by the replica; the quarantine entry goes now,
            # with the replica away (paused: a failover to it would lose the entry).
            os.kill(replica_pid, signal.SIGSTOP)
            return await write(*args, **kwargs)

        quarantine.write = replica_gone_first  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.record_events([late])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # in doubt, never told QUARANTINED
        quarantine.write = write  # type: ignore[method-assign]
        os.kill(replica_pid, signal.SIGCONT)
        (again,) = await client.record_events([late])  # the retry, once a replica confirms it
        assert again.outcome == pb.FACT_OUTCOME_QUARANTINED
        with redis.Redis(host="127.0.0.1", port=replica.port) as held:
            assert [f[b"event_id"] for _, f in held.xrange("atp:quarantine")] == [b"late"]  # once, replicated
    finally:
        os.kill(replica_pid, signal.SIGCONT)
        await client.close()
        await service.stop(grace_s=0.1)
