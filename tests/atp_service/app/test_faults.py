"""Faults against real processes (R7): the service killed with -9 twenty times and Redis (AOF, appendfsync
always) killed five times during a mixed load; afterwards every acknowledged reservation and fact is
there, each exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import grpc
import pytest

from atp_client import AtpClient, timestamp, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from tests.atp_service.app.test_crash import spawn
from tests.ports import held_port
from tests.waiting import FAST_RECONNECT_S

pytestmark = pytest.mark.slow
SKUS = [f"F{i}" for i in range(8)]
SERVICE_KILLS = 20
REDIS_KILL_EVERY = 4  # rounds: 20 / 4 = 5 Redis kills
HELD, CONFIRMED, RELEASED, EXPIRED, REJECTED = (pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_CONFIRMED,
                                                pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_EXPIRED,
                                                pb.RESERVATION_STATE_REJECTED)
CHECKS_AT_ONCE = 16
"""Reservations read back at once by the check (a round trip each, some 2,000 of them)."""
SUCCESSORS = {HELD: {HELD, CONFIRMED, RELEASED, EXPIRED}, CONFIRMED: {CONFIRMED, RELEASED},
              RELEASED: {RELEASED}, REJECTED: {REJECTED}}


class Ledger:
    """What the load was told (acknowledged) and what it tried, to check against afterwards."""

    def __init__(self) -> None:
        self.reservations: dict[str, int] = {}
        self.tried_reservations: set[str] = set()
        self.facts: set[str] = set()
        self.tried_facts: set[str] = set()


async def worker(client: AtpClient, name: str, book: Ledger, rng: random.Random) -> None:
    n = 0
    while True:
        n += 1
        roll = rng.random()
        try:
            if roll < 0.15 and book.reservations:
                rid = rng.choice(sorted(book.reservations))
                rec = await (client.confirm(rid) if roll < 0.11 else client.release(rid))
                book.reservations[rid] = rec.state
            elif roll < 0.3:
                fid = f"{name}-{n}"
                book.tried_facts.add(fid)
                # Its own source: ExplainAvailability names a kept delta by source and time, not event id.
                fact = pb.Fact(event_id=fid, source=fid, kind=pb.FACT_KIND_RECEIPT, sku=rng.choice(SKUS),
                               location="DC",
                               quantity=1, event_time=timestamp(_now_ms()))
                (result,) = await client.record_events([fact])
                if result.outcome in (pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE):
                    book.facts.add(fid)
            else:
                rid = f"{name}-{n}"
                book.tried_reservations.add(rid)
                lines = [(sku, "DC", rng.randint(1, 3)) for sku in rng.sample(SKUS, rng.randint(1, 2))]
                resp = await client.reserve(rid, lines, ttl_seconds=3600)
                book.reservations[rid] = resp.state
        except grpc.aio.AioRpcError as exc:
            code, reason = exc.code(), typed(exc).reason
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                continue  # e.g. releasing what another worker released: a refusal, not a fault
            if reason in ("STORAGE_UNREACHABLE", "OUTCOME_UNKNOWN", "RECOVERING"):
                await asyncio.sleep(0.01)  # Redis is down: the service says so at once; try again
                continue
            return  # the service process is gone


def _now_ms() -> int:
    return int(time.time() * 1000) - 1000


async def test_twenty_service_kills_and_five_redis_kills_lose_nothing_acknowledged(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("faults")
    redis_server = EmbeddedRedis(tmp / "redis", appendfsync="always").start()
    book, rng, port, log = Ledger(), random.Random(4), held_port(), tmp / "service.log"
    try:
        for round_no in range(SERVICE_KILLS):
            proc = spawn(redis_server.url, port, log)
            async with AtpClient(f"127.0.0.1:{port}", timeout_s=3, reconnect_max_s=FAST_RECONNECT_S) as client:
                await client.wait_ready(timeout_s=60)
                if round_no == 0:
                    await client.record_events([
                        pb.Fact(event_id=f"seed-{s}", source="wms", kind=pb.FACT_KIND_COUNT, sku=s, location="DC",
                                quantity=100_000, event_time=timestamp(_now_ms() - 60_000)) for s in SKUS])
                workers = [asyncio.ensure_future(worker(client, f"r{round_no}w{w}", book, rng)) for w in range(8)]
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                if round_no % REDIS_KILL_EVERY == REDIS_KILL_EVERY - 1:
                    redis_server.kill()  # kill -9 of Redis: appends fail, callers get UNAVAILABLE
                    await asyncio.sleep(0.3)
                    redis_server.start()
                    await asyncio.sleep(0.3)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                await asyncio.wait_for(asyncio.gather(*workers), 30)
        assert len(book.reservations) > 200 and len(book.facts) > 50, "the load did not get going"
        proc = spawn(redis_server.url, port, log)
        async with AtpClient(f"127.0.0.1:{port}", timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as client:
            await client.wait_ready(timeout_s=60)
            await check(client, book)
        print(f"faults: {SERVICE_KILLS} service kills, {SERVICE_KILLS // REDIS_KILL_EVERY} Redis kills; "
              f"{len(book.reservations)} acknowledged reservations and {len(book.facts)} acknowledged facts "
              f"checked, 0 lost, none counted twice")
        proc.terminate()
        proc.wait(30)
    finally:
        redis_server.stop()


async def record_of(client: AtpClient, rid: str, gate: asyncio.Semaphore) -> pb.Reservation | None:
    """``rid``'s record, None where the service has none (``gate``: the reads in flight at once)."""
    async with gate:
        try:
            return await client.get_reservation(rid)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return None


async def check(client: AtpClient, book: Ledger) -> None:
    held: dict[str, int] = {}
    committed: dict[str, int] = {}
    rids, gate = sorted(book.tried_reservations), asyncio.Semaphore(CHECKS_AT_ONCE)
    for rid, rec in zip(rids, await asyncio.gather(*(record_of(client, rid, gate) for rid in rids)), strict=True):
        if rec is None:
            assert rid not in book.reservations, f"acknowledged reservation {rid} lost"
            continue
        if rid in book.reservations:
            assert rec.state in SUCCESSORS[book.reservations[rid]], (rid, book.reservations[rid], rec.state)
        for line in rec.lines:
            held[line.sku] = held.get(line.sku, 0) + line.held
            committed[line.sku] = committed.get(line.sku, 0) + line.committed
    for p in await client.availability([(s, "DC") for s in SKUS]):  # every unit counted once
        assert (p.reserved, p.committed) == (held.get(p.sku, 0), committed.get(p.sku, 0)), p
    for sku in SKUS:
        explained = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=sku, location="DC"))
        ids = [d.source for d in explained.deltas_after_count]
        assert len(ids) == len(set(ids)), f"{sku}: a fact applied twice"
        assert set(ids) <= book.tried_facts
        assert explained.availability.on_hand == 100_000 + len(ids)
    applied = {d.source for sku in SKUS for d in (await client.stub.ExplainAvailability(
        pb.ExplainAvailabilityRequest(sku=sku, location="DC"))).deltas_after_count}
    assert book.facts <= applied, f"acknowledged facts lost: {sorted(book.facts - applied)[:5]}"
