"""SHIPMENT facts naming reservations the receiving process does not know, under ``ownership = leases``: a WMS
replaying a day of shipments (orders made before a restore, ids reserved at another process). Each such id's claim
(R5) is read to learn whether its order is homed at another process (``engine.claims_ahead``); on real services and a
real redis-server, what that costs: Redis round trips (``IdClaims.round_trips``) and steps sent to peers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import peers
from atp_service.engine import claims_ahead, parts
from atp_service.engine.router import Engine
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.app.test_processes import SHARDS, Process, group_of, owned, processes, shipment
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on

READ_AHEAD = 8
"""``LOOKS_AHEAD`` here: a call of 20 such facts reads their claims in three round trips."""


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


def sku_of(running: list[Process], process: Process) -> str:
    """A SKU of a group ``process`` owns."""
    return next(sku for sku in (f"k{i}" for i in range(64)) if group_of(sku) in owned(process[0]))


def steps_counted(running: list[Process], engine: Engine) -> Counter[tuple[int, str]]:
    """The order steps ``engine`` sends from here on, counted by (the receiving process's index, the step)."""
    sent: Counter[tuple[int, str]] = Counter()
    remote = engine.remote
    assert remote is not None
    port_of = {f"127.0.0.1:{s.port}": n for n, (s, _) in enumerate(running)}

    async def counted(address: str, request: bytes) -> bytes:
        sent[port_of[address], parts.step_said(request)["step"]] += 1
        return await remote(address, request)

    engine.remote = counted
    return sent


async def test_shipments_naming_ids_unknown_here_read_their_claims_a_batch_at_a_time_R5(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 SHIPMENT facts naming ids no process holds, in one call. Defect: each fact read its id's claim alone, one
    round trip after the other between its shard's turns — 20 here, 10,000 for an ingest of 10,000, and ingest
    crawled. Now the claims are read ahead, ``LOOKS_AHEAD`` facts' in one round trip: 3 here. The facts are decided
    as before, each in the call's order and once (E8): the stock moved, fulfilling nothing, and said (R4)."""
    monkeypatch.setattr(claims_ahead, "LOOKS_AHEAD", READ_AHEAD)
    running = await processes(start_process, 1)
    ((service, client),) = running
    sku = sku_of(running, running[0])
    await client.record_events([receipt("in-1", sku, "DC", 100)])
    assert service.engine is not None and service.engine.ids is not None
    claims = service.engine.ids.claims
    before = claims.round_trips
    answers = await client.record_events([shipment(f"out-{i}", sku, 1, f"gone-{i}") for i in range(20)])
    assert claims.round_trips - before == 3, "one round trip per 8 facts' claims"
    assert [a.outcome for a in answers] == [pb.FACT_OUTCOME_APPLIED] * 20, answers
    assert all(a.detail.startswith(UNFULFILLED) and "unknown" in a.detail for a in answers), answers
    (p,) = await client.availability([(sku, "DC")])
    assert p.on_hand == 80
    again = await client.record_events([shipment(f"out-{i}", sku, 1, f"gone-{i}") for i in range(20)])
    assert [a.outcome for a in again] == [pb.FACT_OUTCOME_DUPLICATE] * 20, again  # E8: once
    (p,) = await client.availability([(sku, "DC")])
    assert p.on_hand == 80


async def test_a_shipment_naming_an_id_claimed_at_another_process_asks_only_that_process_R5_R4(
        start_process: ServiceFactory) -> None:
    """Three processes; 10 reservations made at Q (their ids claimed for Q's group), then 10 SHIPMENT facts of
    another SKU at P naming them (a WMS naming ids P does not know). Defect: P asked every other process — the third
    one too, which never held them — to settle each order, then to resolve it: two steps a fact to every process of
    the keyspace, and a silent one held each fact up to its step's deadline. The claim names the one group the record
    is in: its owner alone is asked. The facts are answered as before: applied, the stock moved, fulfilling nothing
    (R4), once (E8)."""
    running = await processes(start_process, 3)
    p, q, r = running
    a, b = sku_of(running, p), sku_of(running, q)
    await p[1].record_events([receipt("in-a", a, "DC", 100)])
    await q[1].record_events([receipt("in-b", b, "DC", 100)])
    for i in range(10):
        await q[1].reserve(f"r-{i}", [(b, "DC", 1)], ttl_seconds=600)
    engine = p[0].engine
    assert engine is not None and engine.remote is not None
    sent = steps_counted(running, engine)
    answers = await p[1].record_events([shipment(f"out-{i}", a, 1, f"r-{i}") for i in range(10)])
    assert [a.outcome for a in answers] == [pb.FACT_OUTCOME_APPLIED] * 10, answers
    assert all(a.detail.startswith(UNFULFILLED) for a in answers), answers
    assert sent == {(1, "settle"): 10, (1, "resolve"): 10}, "the owner of the claim's group alone, asked"
    again = await p[1].record_events([shipment(f"out-{i}", a, 1, f"r-{i}") for i in range(10)])
    assert [a.outcome for a in again] == [pb.FACT_OUTCOME_DUPLICATE] * 10, again  # E8: once
    (pa,) = await p[1].availability([(a, "DC")])
    (pb_,) = await q[1].availability([(b, "DC")])
    assert (pa.on_hand, pb_.on_hand, pb_.reserved) == (90, 100, 10)
    assert r is not q


async def test_shipments_whose_order_s_process_does_not_answer_wait_for_it_once_a_call_R8(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five reservations made at Q, then five SHIPMENT facts at P naming them, in one call, while Q does not answer
    order steps (paused, cut off from P: its steps wait past their deadline, ``STEP_TIMEOUT_S``). Defect: P asked Q
    to settle each order in turn, each waiting out the whole deadline — 5 s a fact, a WMS's batch of a thousand held
    for 83 minutes, with every fact after them in it. Now a process that did not answer a step of the call is
    not asked again in it: the facts behind the first are refused at once as it was (taken again later, nothing
    applied: R4, E8), and once Q answers again they are applied, each once."""
    running = await processes(start_process, 2)
    p, q = running
    a, b = sku_of(running, p), sku_of(running, q)
    await p[1].record_events([receipt("in-a", a, "DC", 100)])
    await q[1].record_events([receipt("in-b", b, "DC", 100)])
    for i in range(5):
        await q[1].reserve(f"r-{i}", [(b, "DC", 1)], ttl_seconds=600)
    answer, asked = asyncio.Event(), [0]
    serve_part = peers.serve_part

    async def not_answering(engine: Any, request: bytes) -> bytes:  # Q's steps wait past their deadline
        if engine is q[0].engine and not answer.is_set():
            asked[0] += 1
            await answer.wait()
        return await serve_part(engine, request)

    monkeypatch.setattr(peers, "serve_part", not_answering)
    monkeypatch.setattr(peers, "STEP_TIMEOUT_S", 0.3)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await p[1].record_events([shipment(f"out-{i}", a, 1, f"r-{i}") for i in range(5)])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert asked[0] == 1, "Q asked once in the call, not once a fact"
        (pa,) = await p[1].availability([(a, "DC")])
        assert pa.on_hand == 100, "nothing applied"
    finally:
        answer.set()
    answers = await p[1].record_events([shipment(f"out-{i}", a, 1, f"r-{i}") for i in range(5)])
    assert [x.outcome for x in answers] == [pb.FACT_OUTCOME_APPLIED] * 5, answers
    (pa,) = await p[1].availability([(a, "DC")])
    assert pa.on_hand == 95


async def test_a_shipment_of_a_part_here_of_an_order_homed_at_another_process_asks_only_its_home_R5_R4(
        start_process: ServiceFactory, redis_url: str) -> None:
    """Three processes; 5 orders over a group of Q (their home: the lowest of their groups) and one of P, confirmed,
    then 5 SHIPMENT facts at P fulfilling each order's part there (the normal path of an order spanning processes).
    Defect: P asked every other process — R too, which never held them — to settle each order, then to resolve it:
    two steps a fact to every process of the keyspace. The id's claim names the group the order's record is in (R5):
    its owner alone is asked. The parts are fulfilled as before, each once (E8), the orders resolved at their home
    once every part is (R3). An order whose claim Redis lost (back from older data) is asked of every other process,
    as before."""
    running = await processes(start_process, 3)
    owner = {g: n for n, (s, _) in enumerate(running) for g in owned(s)}
    home_group, part_group = next((g, h) for g in range(SHARDS) for h in range(g + 1, SHARDS) if owner[g] != owner[h])
    q, p = running[owner[home_group]], running[owner[part_group]]
    (r,) = [x for x in running if x is not p and x is not q]
    b = next(sku for sku in (f"k{i}" for i in range(64)) if group_of(sku) == home_group)
    a = next(sku for sku in (f"k{i}" for i in range(64)) if group_of(sku) == part_group)
    await p[1].record_events([receipt("in-a", a, "DC", 100)])
    await q[1].record_events([receipt("in-b", b, "DC", 100)])
    for i in range(6):
        await q[1].reserve(f"o-{i}", [(a, "DC", 1), (b, "DC", 1)], ttl_seconds=600)
        await q[1].confirm(f"o-{i}")
    engine = p[0].engine
    assert engine is not None and engine.remote is not None and engine.home_of("o-0") is None
    assert engine.orders is not None and engine.orders.has_part(part_group, "o-0"), "a part of it here"
    sent = steps_counted(running, engine)
    assert engine.ids is not None
    round_trips = engine.ids.claims.round_trips
    answers = await p[1].record_events([shipment(f"out-{i}", a, 1, f"o-{i}") for i in range(5)])
    assert [(x.outcome, x.detail) for x in answers] == [(pb.FACT_OUTCOME_APPLIED, "")] * 5, answers
    assert engine.ids.claims.round_trips - round_trips == 1, "the call's claims read in one round trip"
    home = running.index(q)
    assert sent == {(home, "settle"): 5, (home, "resolve"): 5}, "the owner of the order's home group alone, asked"
    again = await p[1].record_events([shipment(f"out-{i}", a, 1, f"o-{i}") for i in range(5)])
    assert [x.outcome for x in again] == [pb.FACT_OUTCOME_DUPLICATE] * 5, again  # E8: once
    store = redis.asyncio.Redis.from_url(redis_url)
    try:
        await store.delete(engine.ids.claims.key("o-5"))  # its claim lost: its home not known here
    finally:
        await store.aclose()
    sent.clear()
    (lost,) = await p[1].record_events([shipment("out-5", a, 1, "o-5")])
    assert (lost.outcome, lost.detail) == (pb.FACT_OUTCOME_APPLIED, ""), lost
    assert sent == {(n, step): 1 for n in (home, running.index(r)) for step in ("settle", "resolve")}, sent
    (pa,) = await p[1].availability([(a, "DC")])
    assert (pa.on_hand, pa.reserved, pa.committed) == (94, 0, 0)
    await q[1].record_events([shipment(f"out-b-{i}", b, 1, f"o-{i}") for i in range(5)])
    order = await r[1].get_reservation("o-0")
    assert order.state == pb.RESERVATION_STATE_FULFILLED, order
