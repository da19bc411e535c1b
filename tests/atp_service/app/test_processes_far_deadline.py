"""A caller's deadline far in the future, forwarded: a ``ReserveStream`` whose items another process owns is sent
on to that owner over an outbound stream carrying the caller's remaining deadline as it came
(``Forwarder.open_stream``, unbounded, unlike a unary call's 30 s). gRPC fails at once, unsent, a call whose
deadline it cannot hold (now plus it past int64 nanoseconds of the epoch: ~7.4e9 s from 2026): were the caller's
far deadline passed on so, every forwarded item would be told ``DEADLINE_EXCEEDED``, read as in doubt, while
nothing was sent. It is not: gRPC's server holds an inbound deadline at most 27,000 hours ahead (~9.7e7 s,
whatever ``grpc-timeout`` says — a Go client or grpcurl may send up to 99,999,999 hours), which an outbound call
holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import start_process
from tests.atp_service.app.test_processes_split import forwarded, item, reserved, stocked_pair
from tests.conftest import ServiceFactory

__all__ = ["start_process"]  # the fixture, used here by name
FAR = [{"timeout": 1e9},  # far past gRPC's server cap, well short of where a Python (C-core) client fails itself
       {"metadata": (("grpc-timeout", "99999999H"),)}]  # the wire's farthest: 8 digits of hours, ~3.6e11 s
"""Deadlines far past any the service's own calls could hold, as a caller may set them."""


@pytest.mark.parametrize("far", FAR, ids=["timeout-1e9", "grpc-timeout-99999999H"])
async def test_a_stream_with_a_far_deadline_has_its_forwarded_items_decided_by_their_owner(
        start_process: ServiceFactory, far: dict[str, object]) -> None:
    running, here, there = await stocked_pair(start_process)
    (service, client), _ = running

    async def requests() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=[item("f-1", there, 2), item("f-2", here, 3)])
        yield pb.ReserveStreamRequest(reservations=[item("f-3", there, 1)])

    answers = [answer async for answer in client.stub.ReserveStream(requests(), **far)]  # type: ignore[arg-type]
    outcomes = [o for answer in answers for o in answer.outcomes]
    assert [o.reservation_id for o in outcomes] == ["f-1", "f-2", "f-3"]
    assert all(not o.HasField("error") for o in outcomes), outcomes
    assert [o.response.state for o in outcomes] == [pb.RESERVATION_STATE_HELD] * 3
    assert (await reserved(running, there), await reserved(running, here)) == (3, 3)
    assert forwarded(service, "ReserveStream", "ok") == 2 and forwarded(service, "ReserveStream", "error") == 0


@pytest.mark.parametrize("far", FAR, ids=["timeout-1e9", "grpc-timeout-99999999H"])
async def test_a_unary_call_with_a_far_deadline_is_forwarded_and_decided_by_the_owner(
        start_process: ServiceFactory, far: dict[str, object]) -> None:
    running, _, there = await stocked_pair(start_process)
    (service, client), _ = running
    answer = await client.stub.Reserve(item("u-1", there, 4), **far)  # type: ignore[arg-type]
    assert answer.state == pb.RESERVATION_STATE_HELD
    assert await reserved(running, there) == 4
    assert forwarded(service, "Reserve", "ok") == 1
    with pytest.raises(grpc.aio.AioRpcError):  # the same call, a Python client past what it holds: never sent
        await client.stub.Reserve(item("u-2", there, 1), timeout=1e10)  # now + it: past int64 nanoseconds
    assert await reserved(running, there) == 4
