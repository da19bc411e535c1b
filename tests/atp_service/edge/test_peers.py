"""The processes' own ``Peers/Step`` service (``edge.peers``)."""

from __future__ import annotations

import grpc
import pytest

from atp_service import free_port
from atp_service.engine.parts import STEP_METHOD
from tests.conftest import ServiceFactory


async def test_a_step_that_is_not_one_of_this_version_is_refused_invalid_argument(
        start_service: ServiceFactory) -> None:
    """Bytes that do not decode as a step ended the call UNKNOWN with a traceback in the log, as a
    bug of the service would; they are the caller's fault (a peer of another version, or garbage)."""
    _, client = await start_service(ownership="leases", lease_ms=2000, port=free_port(), host="127.0.0.1",
                                    input_streams=())  # the Peers service runs where processes share a keyspace
    step = client.channel.unary_unary(STEP_METHOD, None, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await step(b"\xff\x00 not a step", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an order step of this version" in str(refused.value.details())
