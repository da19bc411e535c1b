"""The auth interceptor's own state, without a server: what one service's callers provoke stays its own."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import grpc
import pytest

from atp_service.edge.auth import AuthInterceptor, Callers


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def _deny_anonymous(interceptor: AuthInterceptor) -> None:
    async def continuation(_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    await interceptor.intercept_service(continuation, _Details("/atp.v1.AvailabilityService/Reserve", ()))


async def test_a_flood_at_one_service_leaves_anothers_audit_lines_written(caplog: pytest.LogCaptureFixture) -> None:
    """The audit lines' rate limit was one per process: a flood of calls without a token at one
    service (another test's, or another embedded in the same process) silenced the next service's
    first denials."""
    flooded, quiet = AuthInterceptor(Callers({})), AuthInterceptor(Callers({}))
    with caplog.at_level(logging.WARNING, logger="atp_service.audit"):
        for _ in range(100):
            await _deny_anonymous(flooded)
        written = len(caplog.records)
        await _deny_anonymous(quiet)
    assert written < 100  # the flood was limited ...
    assert len(caplog.records) == written + 1  # ... and the other service's denial was written all the same
    assert caplog.records[-1].__dict__["event"] == "auth_denied"
