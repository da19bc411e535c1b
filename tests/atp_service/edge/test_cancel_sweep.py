"""R8 over the unary calls that change state besides Reserve and the fact intake (Confirm, Release,
Fulfill — whole and by operation — SetSafetyStock, ReloadEstate), on one shard and across shards, in
one process and on a leased keyspace (an order across groups: a saga): the call's deadline passes
while its Redis write waits (redis-server stopped with SIGSTOP, or its writes paused with CLIENT PAUSE
WRITE), the append then timed out or answered once Redis is back. Afterwards the change is all or
nothing, a retry with the same ids is answered as a first call, every shard answers, the service's
stop leaves no task running, and a restart replaying the whole log recovers the state it held."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.channel_helpers import one_dc_market, write_estate
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_deadline_faults import _an_append_failed, _answered
from tests.conftest import STOP_LIMIT_S, services_on
from tests.ports import held_port
from tests.waiting import answered, taken_past_its_deadline, until

SKUS = [f"sku-{n}" for n in range(16)]  # spread over every shard
LEASED = {"ownership": "leases", "lease_ms": 5_000, "balance_ms": 200, "host": "127.0.0.1", "input_streams": ()}
"""One process on the leased keyspace: an order across groups is a saga (engine/orders.py)."""
Call = Callable[[AtpClient], tuple[Any, Any]]  # (the stub's method, its request)


def _two_shards(place: Callable[[str], int]) -> list[str]:
    first = SKUS[0]
    return [first, next(sku for sku in SKUS if place(sku) != place(first))]


def _lines(skus: list[str], quantity: int) -> list[pb.Line]:
    return [pb.Line(sku=sku, location="S1", quantity=quantity) for sku in skus]


# name -> (confirmed first, the call held by the stopped Redis)
CALLS: dict[str, tuple[bool, Callable[[list[str]], Call]]] = {
    "confirm": (False, lambda skus: lambda c: (c.stub.Confirm, pb.ConfirmRequest(reservation_id="r"))),
    "release": (False, lambda skus: lambda c: (c.stub.Release, pb.ReleaseRequest(reservation_id="r"))),
    "release-confirmed": (True, lambda skus: lambda c: (c.stub.Release, pb.ReleaseRequest(reservation_id="r"))),
    "release-lines": (False, lambda skus: lambda c: (c.stub.Release, pb.ReleaseRequest(
        reservation_id="r", lines=_lines(skus, 1), operation_id="op-1"))),
    "fulfill": (True, lambda skus: lambda c: (c.stub.Fulfill, pb.FulfillRequest(reservation_id="r"))),
    "fulfill-lines": (True, lambda skus: lambda c: (c.stub.Fulfill, pb.FulfillRequest(
        reservation_id="r", lines=_lines(skus, 1), operation_id="op-1"))),
    "safety-stock": (False, lambda skus: lambda c: (c.stub.SetSafetyStock, pb.SetSafetyStockRequest(
        sku=skus[-1], location="S1", quantity=3))),
}


async def _no_snapshot(force: bool = False) -> None:
    return None


async def _state(client: AtpClient) -> tuple[pb.Reservation, list[pb.Availability]]:
    """The record first: its read carries a change an order has pending through (R3), then the positions;
    both read again while the positions are ``possibly_stale`` (R7): a shard of a change across shards in
    doubt may still settle it after its home did (each with its own retries), its positions then leaving
    out what landed — a read in between, not a part landed."""
    read: list[tuple[pb.Reservation, list[pb.Availability]]] = []

    async def whole() -> bool:
        record = await _answered(client.stub.GetReservation, pb.GetReservationRequest(reservation_id="r"))
        positions = await _answered(client.stub.GetAvailability, pb.GetAvailabilityRequest(
            keys=[pb.PositionKey(sku=sku, location="S1") for sku in SKUS]))
        read[:] = [(record.reservation, list(positions.positions))]
        return not positions.possibly_stale

    await until(whole, "a read of the record and positions with no shard in doubt")
    return read[0]


def _answer_of(answer: Any) -> Any:
    return answer.availability if isinstance(answer, pb.SetSafetyStockResponse) else answer.reservation


class Hold:
    """Redis held: stopped (SIGSTOP: nothing answered) or its writes paused (CLIENT PAUSE WRITE: scripts wait)."""

    def __init__(self, server: EmbeddedRedis, how: str) -> None:
        assert server.process is not None
        self.pid, self.how, self.admin = server.process.pid, how, redis.Redis.from_url(server.url)

    def __enter__(self) -> None:
        if self.how == "sigstop":
            os.kill(self.pid, signal.SIGSTOP)
        else:
            self.admin.client_pause(60_000, all=False)

    def __exit__(self, *exc: object) -> None:
        if self.how == "sigstop":
            os.kill(self.pid, signal.SIGCONT)
        else:
            self.admin.client_unpause()


MODES = {  # (leased, how Redis is held, the held append timed out before Redis is back)
    "one-process-sigstop-timed-out": (False, "sigstop", True),
    "one-process-paused-landed": (False, "pause-write", False),
    "leased-paused-timed-out": (True, "pause-write", True),
    "leased-sigstop-landed": (True, "sigstop", False),
}


# Each call on one shard and across shards, the four modes taken in turn: 14 cases, not the 56 of every
# combination (~40 s more of `make test`); each call meets a leased and a one-process mode.
CASES = [(name, spanning, sorted(MODES)[(i + 2 * spanning) % len(MODES)])
         for i, name in enumerate(sorted(CALLS)) for spanning in (False, True)]


@pytest.mark.parametrize(("name", "spanning", "mode"), CASES,
                         ids=[f"{n}-{'across-shards' if s else 'one-shard'}-{m}" for n, s, m in CASES])
async def test_r8_a_change_whose_deadline_passes_while_redis_is_held_lands_whole_or_not_and_recovers_alike(
        tmp_path: Path, name: str, spanning: bool, mode: str) -> None:
    confirmed, call_of = CALLS[name]
    leased, how, outlast = MODES[mode]
    outside = set(asyncio.all_tasks())
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start(**(LEASED | {"port": held_port()} if leased else {}))
            skus = _two_shards(service.engine.place) if spanning else SKUS[:1]
            await answered(lambda: client.record_events([receipt(f"stock-{sku}", sku, "S1", 10)
                                                         for sku in SKUS]))
            await answered(lambda: client.reserve("r", [(sku, "S1", 2) for sku in skus]))
            if confirmed:
                await answered(lambda: client.confirm("r"))
            method, request = call_of(skus)(client)
            before = await _state(client)
            failed = _an_append_failed(service)
            with Hold(server, how):
                ended = await taken_past_its_deadline(lambda d: method(request, timeout=d), service)
                assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                if outlast:  # else Redis answers the append once it is back
                    await until(failed, "the held append timed out", 20)
            landed = await _state(client)
            first = await _answered(method, request)  # the retry: answered as a first call would be (R5)
            assert _answer_of(await _answered(method, request)) == _answer_of(first)
            done = await _state(client)
            assert done != before
            assert landed in (before, done)  # whole or nothing, never a part
            assert _answer_of(first) in (done[0], *done[1])
            for n, sku in enumerate(SKUS):  # every shard answers a change
                await _answered(client.stub.Reserve, pb.ReserveRequest(
                    reservation_id=f"after-{n}", lines=_lines([sku], 1)))
            after = await _state(client)
            for actor in service.engine.actors:  # as a crash after the drain: the restart replays the whole log
                actor.checkpoint = _no_snapshot  # type: ignore[method-assign]
            await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)
            await client.close()
            await until(lambda: not [t for t in asyncio.all_tasks() if t not in outside and not t.done()
                                     and t is not asyncio.current_task()], "no task of the service left", 20)
            assert not redis.Redis.from_url(server.url).keys("*snap*")
            _restarted, client2 = await start(**(LEASED | {"port": held_port()} if leased else {}))
            assert await _state(client2) == after


async def test_r7_a_state_read_while_one_shard_of_a_change_still_settles_is_flagged_and_read_again(
        tmp_path: Path) -> None:
    """The interleaving behind a partial-looking ``landed`` above (one process, across shards, the held
    append timed out): each shard settles its doubt on its own (``landed_of``'s retries, each with its
    own backoff), so the record's home may have applied the late landing while the other shard has not
    yet. GetReservation then answers (its home settled), GetAvailability reads the other shard's memory
    without the landing and says so (``possibly_stale``, R7) — not a part landed: that shard applies it
    once settled. ``_state`` reads again until no shard is in doubt, the whole change then."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start()
            skus = _two_shards(service.engine.place)
            await answered(lambda: client.record_events([receipt(f"stock-{sku}", sku, "S1", 10) for sku in SKUS]))
            await answered(lambda: client.reserve("r", [(sku, "S1", 2) for sku in skus]))
            before = await _state(client)
            [other] = [a for a in (service.engine.actors[service.engine.place(sku)] for sku in skus)
                       if a.ledger.reservation("r") is None]
            gate, settle = asyncio.Event(), other._settle

            async def settle_once_a_stale_read_is_answered() -> None:
                await gate.wait()
                await settle()
            other._settle = settle_once_a_stale_read_is_answered  # type: ignore[method-assign]
            unsure = service.engine.storage_unsure

            def let_the_other_settle(keys: Any) -> bool:
                stale = unsure(keys)
                if stale:
                    gate.set()  # this read's positions are taken already: they leave its landing out
                return stale
            release = pb.ReleaseRequest(reservation_id="r", lines=_lines(skus, 1), operation_id="op-1")
            failed = _an_append_failed(service)
            with Hold(server, "sigstop"):
                ended = await taken_past_its_deadline(lambda d: client.stub.Release(release, timeout=d), service)
                assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                await until(failed, "the held append timed out", 20)
            service.engine.storage_unsure = let_the_other_settle  # type: ignore[method-assign]
            landed = await _state(client)
            assert gate.is_set()  # a read found the other shard in doubt, its home settled (GetReservation answered)
            await _answered(client.stub.Release, release)  # the retry, answered as the first call
            done = await _state(client)
            assert done != before
            assert landed == done  # whole: the late landing, every shard of it
            await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)


async def test_r8_a_reload_whose_deadline_passes_while_redis_is_stopped_changes_all_or_nothing(
        tmp_path: Path) -> None:
    path = write_estate(tmp_path, one_dc_market(0, 1000.0))
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start(estate=path)
            old = service.estate
            path.write_text(one_dc_market(0, 1000.0).replace('type = "dc"\n', 'type = "dc"\nsafety_stock = 4\n')
                            + OUTLET)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                ended = await taken_past_its_deadline(
                    lambda d: client.stub.ReloadEstate(pb.ReloadEstateRequest(), timeout=d), service)
                assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await until(lambda: not service._reloading.locked(), "the reload's lock given back")
            assert service.channels is not None
            assert service.estate is service.channels.estate  # all or nothing
            assert service.estate is old or set(service.estate.channels) == {"market", "outlet"}
            answer = await _answered(client.stub.ReloadEstate, pb.ReloadEstateRequest())
            assert sorted(c.name for c in answer.channels) == ["market", "outlet"]
            await answered(lambda: client.record_events([receipt("count-1", "sku-new", "dc-1", 10)]))
            [position] = await client.availability([("sku-new", "dc-1")])
            assert (position.safety_stock, position.available) == (4, 6)
            await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)


OUTLET = '\n[[channels]]\nname = "outlet"\nsells_from = ["dc-1"]\nthrottle_ms = 0\nrate_limit_per_s = 1000.0\n'
