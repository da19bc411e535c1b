"""R8 across processes: a change of an order whose parts two processes own (a saga, engine/orders.py),
its caller's deadline passing while one process's append of the order is held back (a slow Redis at
that process only: ``HoldingProxy``). The change lands whole or not at all, a retry is answered as
a first call, every group answers, both processes stop, and a restart recovers the same state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge import peers
from tests.atp_service.app.test_processes import SHARDS, balanced, group_of, members_read, owned, routed
from tests.atp_service.app.test_processes_streams import counted
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_deadline_faults import _answered
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import STOP_LIMIT_S, services_on
from tests.ports import held_port
from tests.waiting import answered, taken_past_its_deadline, until

__all__ = ["proxy"]  # the fixture, used by name

ORDER = "zq-order"  # its bytes mark the held process's appends of the order
LEASED = {"ownership": "leases", "balance_ms": 200, "shards": SHARDS, "lease_ms": 5_000, "input_streams": (),
          "redis_timeout_s": 0.5}
SKUS = [f"k{i}" for i in range(64)]
CHANGES: dict[str, tuple[bool, Callable[[list[str]], tuple[str, Any]]]] = {
    "confirm": (False, lambda skus: ("Confirm", pb.ConfirmRequest(reservation_id=ORDER))),
    "release": (False, lambda skus: ("Release", pb.ReleaseRequest(reservation_id=ORDER))),
    "release-lines": (False, lambda skus: ("Release", pb.ReleaseRequest(
        reservation_id=ORDER, operation_id="op-1", lines=[pb.Line(sku=s, location="DC", quantity=1) for s in skus]))),
    "fulfill": (True, lambda skus: ("Fulfill", pb.FulfillRequest(reservation_id=ORDER))),
    "fulfill-lines": (True, lambda skus: ("Fulfill", pb.FulfillRequest(
        reservation_id=ORDER, operation_id="op-1", lines=[pb.Line(sku=s, location="DC", quantity=1) for s in skus]))),
}



async def _state(client: AtpClient, skus: list[str]) -> tuple[pb.Reservation, list[pb.Availability]]:
    record = await _answered(client.stub.GetReservation, pb.GetReservationRequest(reservation_id=ORDER))
    positions = await _answered(client.stub.GetAvailability, pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku=sku, location="DC") for sku in skus]))
    return record.reservation, list(positions.positions)


async def _until_held(proxy: HoldingProxy, plain: AtpService, slow: AtpService,
                      call: Callable[[float], Awaitable[object]]) -> grpc.aio.AioRpcError:
    """The refusal of the change (``call``, made to ``plain``, its caller leaving at its deadline), made until the slow
    process's append of the order is held. With ``step_cut`` every step to the slow process is cut at 0.1 s, the read
    of the order's part there too: on a busy host's stall of 0.1 s that read was cut, the change refused in doubt
    before anything was decided, nothing pending (R7), and no append ever came. Once neither process has the change
    in hand (no call, no saga of the order) and nothing is held, its caller makes it again, the same ids (R5). The
    bound is for a broken run only."""
    services = (plain, slow)
    sagas = [s.engine.orders._locks for s in services if s.engine is not None and s.engine.orders is not None]
    assert len(sagas) == len(services)

    def ended() -> bool:
        return all(ORDER not in held for held in sagas) and all(s._servicer.drain.active == 0 for s in services)

    deadline = time.monotonic() + 60
    while True:
        refused = await taken_past_its_deadline(call, plain, 0.3)
        await until(lambda: proxy.held or ended(), "the change's append held, or the change ended", 30)
        if proxy.held:
            return refused
        assert time.monotonic() < deadline, "the slow process's append of the order never held"


@pytest.mark.parametrize(("name", "late", "step_cut"), [  # each kind of call, landed late or dropped, step cut or not
    ("confirm", True, True), ("release", False, True), ("release-lines", False, False), ("fulfill-lines", True, False)])
async def test_r8_an_order_change_whose_caller_leaves_while_a_part_s_process_is_slow_lands_whole(
        proxy: HoldingProxy, redis_url: str, name: str, late: bool, step_cut: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    confirmed, change = CHANGES[name]
    if step_cut:  # a step sent to the slow process outlasts its deadline: the peer's handler is cancelled
        monkeypatch.setattr(peers, "STEP_TIMEOUT_S", 0.1)
    proxied = f"redis://127.0.0.1:{proxy._server.sockets[0].getsockname()[1]}/0"  # type: ignore[union-attr]
    async with (
        services_on(redis_url, **LEASED) as start_plain,
        services_on(proxied, **LEASED) as start_slow,
    ):
        running = [await start_plain(port=held_port(), host="127.0.0.1"),
                   await start_slow(port=held_port(), host="127.0.0.1")]
        await members_read(running)
        await until(lambda: balanced(running) and routed(running), "the groups spread", 60)
        (plain, client), (slow, _) = running
        skus = [next(s for s in SKUS if group_of(s) in owned(plain)),
                next(s for s in SKUS if group_of(s) in owned(slow))]
        everything = sorted({next(s for s in SKUS if group_of(s) == g) for g in range(SHARDS)} | set(skus))
        await answered(lambda: client.record_events(
            [receipt(f"stock-{s}", s, "DC", 10) for s in everything]))
        await answered(lambda: client.reserve(ORDER, [(s, "DC", 2) for s in skus]))
        if confirmed:
            await answered(lambda: client.confirm(ORDER))
        method_name, request = change(skus)
        method = getattr(client.stub, method_name)
        before = await _state(client, skus)
        failed = counted([slow], "atp_log_append_failures_total")  # a set-up write's doubt counts too
        proxy.hold(ORDER.encode())
        ended = await _until_held(proxy, plain, slow, lambda d: method(request, timeout=d))
        assert ended.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        await until(lambda: counted([slow], "atp_log_append_failures_total") > failed,
                    "the held append in doubt", 30)
        proxy.hold()
        if late:  # refused by the fence the slow process raised to settle it (R7)
            for held in list(proxy.held):
                await proxy.land(held)
        else:  # never reaches Redis
            proxy.drop()
        landed = await _state(client, skus)
        first = await _answered(method, request)
        again = await _answered(method, request)
        assert again.reservation == first.reservation
        done = await _state(client, skus)
        assert done != before and first.reservation == done[0]
        assert landed in (before, done)  # whole or nothing
        for n, sku in enumerate(everything):  # every group answers a change
            await _answered(client.stub.Reserve, pb.ReserveRequest(
                reservation_id=f"after-{n}", lines=[pb.Line(sku=sku, location="DC", quantity=1)]))
        after = await _state(client, everything)
        for service, _ in reversed(running):
            await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)
        _, restarted = await start_plain(port=held_port(), host="127.0.0.1")
        assert await _state(restarted, everything) == after
