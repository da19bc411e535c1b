"""Differential over the real service and a real ``redis-server``: one script of one-line Reserves (and
the facts, safety stock, confirms and releases around them), with Redis faults between the calls,
answered the same by the unary fast path — the Reserve routed inline (``Engine.reserve``), its turn
taken without an envelope (``ShardActor._turn_now``), its entry sent alone (``LogStore._flush``,
``Lane.begin_packed``) — as by the general path: each Reserve routed by ``Routes`` in a batch of one
(``Engine.reserve_many``), each turn through ``apply_batch``, each commit cut, packed and answered as
a batch's and sent by a task (``LogStore._flush_batches``, a tracer set). Every answer byte for byte (or the
same status and reason), the same positions and records, the same counts of decisions, and after a
restart the same state again (R7). Faults: the script flushed (NOSCRIPT), the write connections
killed, Redis out of memory, an append whose answer is lost (its connection reset: in doubt) landing
after its settle. Every fault on the test's cue, none by a timeout: both runs meet the same ones."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from opentelemetry.trace import NoOpTracer

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.storage.scripts import APPEND_SCRIPT
from reservation import DomainError, Reservation, ReserveCommand
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.atp_service.storage.test_in_doubt import reserve_once_settled
from tests.conftest import ServiceFactory
from tests.conftest import test_config as service_config
from tests.waiting import until

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest().encode()
POSITIONS = [("A", "S1"), ("B", "S2"), ("C", "S1"), ("D", "S1"), ("E", "S2")]
OUTCOMES = ("held", "rejected", "replayed")


def _general(service: AtpService) -> None:
    """The general path everywhere the fast one takes a shortcut."""
    service._log.tracer = NoOpTracer()  # type: ignore[attr-defined]  # turns via apply_batch, commits via _flush_batches
    engine = service.engine

    async def reserve(cmd: ReserveCommand) -> tuple[Reservation, bool]:
        (out,) = await engine.reserve_many([cmd])
        if isinstance(out, DomainError):
            raise out
        return out

    engine.reserve = reserve  # type: ignore[method-assign]


async def _answer(call: Any) -> object:
    try:
        answer = await call
    except grpc.aio.AioRpcError as exc:
        return said(exc)
    return answer.SerializeToString(deterministic=True)


async def _state(client: AtpClient, ids: list[str]) -> list[object]:
    out: list[object] = [[a.SerializeToString(deterministic=True) for a in await client.availability(POSITIONS)]]
    for rid in ids:
        out.append(await _answer(client.get_reservation(rid)))
    return out


async def _settled(client: AtpClient, rid: str, sku: str) -> object:
    """A Reserve tried again while its shard settles its doubt (UNAVAILABLE until then)."""
    answers: list[object] = []

    async def taken() -> bool:
        answer = await _answer(client.reserve(rid, [(sku, "S2", 1)], ttl_seconds=600))
        if isinstance(answer, tuple) and answer[0] == grpc.StatusCode.UNAVAILABLE:
            return False
        answers.append(answer)
        return True

    await until(taken, f"{rid} decided once the shard settled")
    return answers[0]


async def _script(tmp_path: Path, general: bool) -> list[object]:
    transcript: list[object] = []
    with EmbeddedRedis(tmp_path / ("general" if general else "fast"), appendfsync="always") as server:
        admin = redis.Redis.from_url(server.url)
        proxy = HoldingProxy("127.0.0.1", server.port)
        url = await proxy.start()
        config = service_config(shards=2, redis_timeout_s=30.0)  # no call of the script may time out
        service = AtpService(config, url, clock=ManualClock(T0))
        await service.start()
        if general:
            _general(service)
        client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=10)
        ids = [f"r{i}" for i in range(12)]
        try:
            note = transcript.append
            await client.record_events([receipt("e1", "A", "S1", 10), receipt("e2", "B", "S2", 3),
                                        receipt("e3", "D", "S1", 50), receipt("e4", "E", "S2", 50)])
            safety = pb.SetSafetyStockRequest(sku="A", location="S1", quantity=2)
            note(await _answer(client.stub.SetSafetyStock(safety)))
            note(await _answer(client.reserve("r0", [("A", "S1", 5)], ttl_seconds=600, order_ref="o")))  # held
            note(await _answer(client.reserve("r1", [("A", "S1", 4)], ttl_seconds=600)))  # 3 left: refused
            note(await _answer(client.reserve("r1", [("A", "S1", 4)], ttl_seconds=600)))  # R5: the refusal again
            note(await _answer(client.reserve("r1", [("A", "S1", 3)], ttl_seconds=600)))  # other lines: refused
            note(await _answer(client.reserve("r0", [("A", "S1", 5)], ttl_seconds=600)))  # other order_ref
            note(await _answer(client.reserve("r2", [("C", "S1", 1)])))  # a position never seeded
            note(await _answer(client.reserve("r3", [("B", "S2", 3)], allow_partial=True, ttl_seconds=60)))
            await client.record_events([receipt("s1", "A", "S1", 6, kind=pb.FACT_KIND_SALE)])  # oversold: -3
            note(await _answer(client.reserve("r4", [("A", "S1", 1)], ttl_seconds=600)))
            note(await _answer(client.reserve("r4", [("A", "S1", 1)], ttl_seconds=600)))
            admin.script_flush()  # the next append finds no script (NOSCRIPT): loaded and sent again
            note(await _answer(client.reserve("r5", [("D", "S1", 2)], ttl_seconds=600)))
            clients = proxy._writers[::2]  # each connection's client end (its Redis end follows it)
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # the write connections
            await until(lambda: all(w.is_closing() for w in clients), "the killed connections closed to the service")
            note(await _answer(client.reserve("r6", [("D", "S1", 2)], ttl_seconds=600)))
            admin.config_set("maxmemory", 1)  # full: the append is refused OOM, certainly not landed
            try:
                note(await _answer(client.reserve("r7", [("D", "S1", 3)], ttl_seconds=600)))
            finally:
                admin.config_set("maxmemory", 0)
            note(await _answer(client.reserve("r7", [("D", "S1", 3)], ttl_seconds=600)))  # nothing was decided
            proxy.hold(APPEND_SHA, reset=True)  # the append's answer lost: in doubt, told UNAVAILABLE
            note(await _answer(client.reserve("r8", [("E", "S2", 4)], ttl_seconds=600)))
            proxy.hold()
            note(await _settled(client, "r9", "E"))
            late = await proxy.land(proxy.held[0])  # after the settle fenced the shard
            note(late.startswith(b"*1\r\n") and b"STALE" in late)
            note(await _answer(client.reserve("r8", [("E", "S2", 4)], ttl_seconds=600)))  # not landed: decided now
            note(await _answer(client.confirm("r0")))
            note(await _answer(client.release("r3")))
            note(await _answer(client.reserve("r10", [("B", "S2", 3)], ttl_seconds=600)))
            transcript.append(await _state(client, ids))
            engine = service.metrics.engine
            transcript.append([engine.reservations_of(outcome).value for outcome in OUTCOMES])
            await until(lambda: not any(actor._inflight for actor in service.engine.actors),  # type: ignore[union-attr]
                        "nothing in flight")
        finally:
            await client.close()
            await service.stop(grace_s=0.1)
            await proxy.close()
        again = AtpService(config, server.url, clock=ManualClock(T0))
        await again.start()
        client = AtpClient(f"127.0.0.1:{again.port}", timeout_s=10)
        try:
            transcript.append(await _state(client, ids))  # R7: what was acknowledged, and nothing else
        finally:
            await client.close()
            await again.stop(grace_s=0.1)
            admin.close()
    return transcript


async def test_one_line_reserves_answer_as_the_general_path_through_faults_R1_R2_R5_R7(tmp_path: Path) -> None:
    fast = await _script(tmp_path, general=False)
    general = await _script(tmp_path, general=True)
    for n, (mine, theirs) in enumerate(zip(fast, general, strict=True)):
        assert mine == theirs, n


async def test_a_one_line_reserve_is_decided_on_the_shard_place_names_and_meets_its_id_s_record_elsewhere_R5(
        start_service: ServiceFactory) -> None:
    """``Engine.reserve`` routes a Reserve of one line itself, a copy of ``Engine.place`` and of ``Routes.route``'s
    one-line branch: its record on the shard ``place`` names (where every other path — facts, reads, ``Routes``,
    the coordinator, the client's routing — finds the SKU), and a retry of an id whose record is on another
    shard meets that record there (R5) instead of deciding anew where its SKU is."""
    service, client = await start_service()
    engine = service.engine
    skus = [f"sku-{i}" for i in range(64)]
    await client.record_events([receipt(f"e-{sku}", sku, "S1", 5) for sku in skus])
    for sku in skus:
        answer = await client.reserve(f"r-{sku}", [(sku, "S1", 2)], ttl_seconds=600)
        assert answer.state == pb.RESERVATION_STATE_HELD
        home = engine.place(sku)
        assert engine.routes.homes[f"r-{sku}"] == home
        assert f"r-{sku}" in engine.actors[home].ledger.reservations
        (position,) = await client.availability([(sku, "S1")])
        assert (position.reserved, position.available) == (2, 3)
    first, second = next((a, b) for a in skus for b in skus if engine.place(a) < engine.place(b))
    both = await client.reserve("x", [(first, "S1", 1), (second, "S1", 1)], ttl_seconds=600)  # home: the lower
    assert both.state == pb.RESERVATION_STATE_HELD and engine.routes.homes["x"] == engine.place(first)
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await client.reserve("x", [(second, "S1", 1)], ttl_seconds=600)
    assert said(other.value) == (grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_ID_REUSED")
    assert "x" not in engine.actors[engine.place(second)].ledger.reservations
    assert (await client.reserve("x", [(first, "S1", 1), (second, "S1", 1)], ttl_seconds=600)).replayed
    assert engine.routes.attempts == {}
    for sku in (first, second):
        (position,) = await client.availability([(sku, "S1")])
        assert (position.reserved, position.available) == (3, 2)


async def _caller_gone(client: AtpClient, proxy: HoldingProxy, rid: str, sku: str, qty: int) -> None:
    """A unary Reserve whose caller goes away (cancels) once its entry is on its way to Redis (held)."""
    req = pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, location="S1", quantity=qty)])
    req.ttl.seconds = 600
    call = client.stub.Reserve(req)
    await until(lambda: proxy.held, "the append held")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_caller_gone_while_its_one_line_reserve_is_sent_alone_changes_nothing_about_it_R7_R8(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    """The entry of a unary Reserve sent alone (``_flush``) while its caller goes away: landed (its
    reply late, after the caller left) the Reserve was applied whole and its retry replays it; never
    answered (its connection reset) it is in doubt, fenced and read, not landed, and its retry decides it
    anew — once. Either way the shard goes on answering, nothing is left in flight or pending, and what
    a restart finds is what was acknowledged. No append times out: Redis's answer comes, or its
    connection is reset, on the test's cue."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    url = await proxy.start()
    config = service_config(shards=1, redis_timeout_s=30.0)
    try:
        service = AtpService(config, url, clock=ManualClock(T0))
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=10)
        try:
            await client.record_events([receipt("e1", "A", "S1", 10)])
            proxy.hold(APPEND_SHA)
            await _caller_gone(client, proxy, "landed", "A", 3)
            proxy.hold()
            late = await proxy.land(proxy.held[0])  # durable, its caller gone
            assert late.startswith(b"*1\r\n") and b"!" not in late
            again = await client.reserve("landed", [("A", "S1", 3)], ttl_seconds=600)
            assert again.replayed and again.state == pb.RESERVATION_STATE_HELD  # R8: applied whole, replayed
            proxy.hold(APPEND_SHA)
            await _caller_gone(client, proxy, "unanswered", "A", 4)
            proxy.hold()
            proxy.cut(proxy.held[0])  # its answer lost: in doubt
            # told UNAVAILABLE until the doubt settles
            answer = await reserve_once_settled(client, "unanswered", (("A", "S1", 4),))
            assert not answer.replayed and answer.state == pb.RESERVATION_STATE_HELD  # not landed: decided now
            late = await proxy.land(proxy.held[0])
            assert b"STALE" in late  # the settle fenced it first (R7)
            (a,) = await client.availability([("A", "S1")])
            assert (a.reserved, a.available) == (7, 3)
            actor, log = service.engine.actors[0], service._log  # type: ignore[attr-defined]
            await until(lambda: not actor._inflight and not log._pending and not log._in_flight, "nothing in flight")
        finally:
            await client.close()
            await service.stop(grace_s=0.1)
    finally:
        await proxy.close()
    again_service = AtpService(config, redis_url, clock=ManualClock(T0))
    await again_service.start()
    client = AtpClient(f"127.0.0.1:{again_service.port}", timeout_s=10)
    try:
        (a,) = await client.availability([("A", "S1")])
        assert (a.reserved, a.available) == (7, 3)
        for rid in ("landed", "unanswered"):
            assert (await client.get_reservation(rid)).state == pb.RESERVATION_STATE_HELD
    finally:
        await client.close()
        await again_service.stop(grace_s=0.1)
