"""What ``/metrics`` says of an order left half-way (``ownership = leases``, real Redis, two real
service processes, the home process's metrics endpoint): ``atp_orders_unsettled`` (alert
ATPOrdersUnsettled, > 0 for a minute) counts it for as long as it is not settled — while
housekeeping's saga drives it on and the step waits on a process that does not answer too."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.engine import parts
from reservation import Reason, Unavailable
from tests.atp_service.app.test_processes import SHARDS, processes
from tests.atp_service.app.test_processes_order_steps import home_and_other
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms; metrics served."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), metrics_port=0) as start:
        yield start


def unsettled(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    (value,) = [sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                if sample.name == "atp_orders_unsettled"]
    return value


async def test_an_order_whose_step_waits_on_a_process_that_does_not_answer_is_counted_unsettled(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other process cut off (its steps unanswered for ``STEP_TIMEOUT_S``, 5 s, each time):
    housekeeping took the order out of the count as it drove it on, and put it back only once the
    step failed, ready to be taken again at the next pass (100 ms). The gauge said 0 for 5 s of
    every 5.1 s, however long the order waited half-way, so ATPOrdersUnsettled never fired."""
    running = await processes(start_process, 2)
    (home, home_client), (_, other_client), a, b = home_and_other(running)
    await home_client.record_events([receipt("in-a", a, "DC", 5)])
    await other_client.record_events([receipt("in-b", b, "DC", 5)])
    held = await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
    assert held.state == pb.RESERVATION_STATE_HELD
    engine = home.engine
    assert engine is not None and engine.orders is not None and engine.remote is not None
    send, mode = engine.remote, ["refuse"]  # then "hang"
    waiting, answer = asyncio.Event(), asyncio.Event()

    async def cut_off(address: str, request: bytes) -> bytes:  # what ``edge.peers.step_sender`` does then
        if isinstance(parts._requests.decode(request).step, parts.ApplyShare):  # the confirmation of the part
            if mode[0] == "refuse":
                raise Unavailable(f"peer {address} did not answer an order step (DEADLINE_EXCEEDED)",
                                  Reason.OUTCOME_UNKNOWN)
            waiting.set()
            await answer.wait()
        return await send(address, request)

    monkeypatch.setattr(engine, "remote", cut_off)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await home_client.confirm("o-1")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Counted, whether it waits for housekeeping's next pass or housekeeping (every 100 ms) is driving it on
    # right now: the set alone missed it in the second case.
    assert unsettled(home.metrics_port) == 1, "the order refused half-way, counted unsettled"
    mode[0] = "hang"  # housekeeping's next drive waits on the step
    await asyncio.wait_for(waiting.wait(), 30)
    assert unsettled(home.metrics_port) == 1, "the order waits half-way, its step unanswered"
    answer.set()
    await until(lambda: unsettled(home.metrics_port) == 0 and not engine.orders.unsettled, "the order settled")
    assert (await home_client.get_reservation("o-1")).state == pb.RESERVATION_STATE_CONFIRMED
