"""Each way an append fails has its own reason on ``atp_log_append_failures_total``: the operator's
act differs (give Redis memory, find why it is slow or gone, find the other owner)."""

from __future__ import annotations

import pytest
from redis import exceptions as rx

from atp_service.metrics import APPEND_FAILURE_REASONS
from atp_service.storage.durability import append_failure_reason
from atp_service.storage.log import Fenced
from atp_service.storage.nodes import NotReplicated


@pytest.mark.parametrize(("error", "reason"), [
    (rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out_of_memory"),
    (rx.ResponseError("OOM command not allowed when used memory > 'maxmemory'. script: ab, on @user_script:53."),
     "out_of_memory"),
    (Fenced("FENCED epoch 3 of atp:{g0}:owner was replaced by 4"), "fenced"),
    (rx.TimeoutError("Timeout reading from socket"), "timeout"),
    (TimeoutError(), "timeout"),
    (rx.ConnectionError("Connection closed by server."), "connection"),
    (ConnectionRefusedError(111, "Connection refused"), "connection"),
    (rx.RedisClusterException("Redis Cluster cannot be connected"), "connection"),
    (NotReplicated("WAIT: 0 of 1 replicas confirmed the write in 1000 ms"), "not_replicated"),
    (rx.RedisError("STALE shard fenced at 7"), "refused"),
    (rx.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), "refused"),
    (rx.DataError("a log entry cannot be sent to Redis"), "other"),
    (None, "other"),  # cancelled
])
def test_each_failure_has_its_reason_of_a_closed_set(error: BaseException | None, reason: str) -> None:
    assert append_failure_reason(error) == reason
    assert reason in APPEND_FAILURE_REASONS
