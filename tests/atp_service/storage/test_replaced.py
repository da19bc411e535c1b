"""One writer per keyspace: a newer instance on the same Redis keyspace fences the older one
(atp_service/storage/log.py, ``LogStore.claim``), which takes no more changes and stops — two instances
deciding against the same units would oversell."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app.cli import EXIT_REPLACED
from atp_service.engine.clock import ManualClock
from atp_service.engine.shard import ShardActor
from reservation import Unavailable, reserve
from tests.atp_service.app.test_cli import serve, stop_or_explain
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.engine.helpers import until_turns
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory
from tests.reservation.helpers import cmd, ledger_with
from tests.sim.simlog import SimLog
from tests.sim.world import sim_config


def _reserve(rid: str, qty: int) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku="A", location="DC", quantity=qty)])


async def test_a_newer_instance_fences_the_older_which_applies_nothing_more(start_service: ServiceFactory) -> None:
    older, old_client = await start_service()
    await old_client.record_events([receipt("seed", "A", "DC", 10)])
    await old_client.reserve("r1", [("A", "DC", 3)])
    newer, new_client = await start_service()  # same Redis, same key prefix: claims the keyspace
    (seen,) = await new_client.availability([("A", "DC")])
    assert seen.reserved == 3  # what the older one acknowledged is the newer one's too

    for attempt in ("first write after the claim", "and every one after it"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the stub: AtpClient would retry UNAVAILABLE
            await old_client.stub.Reserve(_reserve(f"late-{len(attempt)}", 7))
        said = typed(refused.value).refusal
        assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "INSTANCE_REPLACED"), attempt
    assert older.replaced.is_set() and not newer.replaced.is_set()
    (old_view,) = await old_client.availability([("A", "DC")])
    assert old_view.reserved == 3  # the refused decision was taken back in memory too

    held = await new_client.reserve("r2", [("A", "DC", 7)])
    assert held.state == pb.RESERVATION_STATE_HELD
    (a,) = await new_client.availability([("A", "DC")])
    assert (a.reserved, a.available) == (10, 0)


def test_serve_exits_with_its_own_status_when_replaced(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc, target, _ = serve(redis_url, log)

    async def replace_it() -> None:
        from tests.conftest import test_config  # a module-level import would be collected as a test

        newer = AtpService(test_config(shards=16), redis_url)  # serve's default
        await newer.start()
        try:
            async with AtpClient(target) as client:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.stub.RecordEvents(pb.RecordEventsRequest(events=[receipt("x", "A", "DC", 1)]))
                assert said(refused.value) == (grpc.StatusCode.UNAVAILABLE, "INSTANCE_REPLACED")
        finally:
            await newer.stop(grace_s=0.1)

    try:
        asyncio.run(replace_it())
        assert stop_or_explain(proc, log) == EXIT_REPLACED  # it stopped by itself, no signal sent
    finally:
        if proc.poll() is None:  # a failure above must not leave the service running
            proc.kill()
            proc.wait()
    assert "a newer instance claimed keyspace" in log.read_text()


async def test_a_replaced_instance_that_only_reads_notices_without_a_write(start_service: ServiceFactory) -> None:
    older, _ = await start_service(owner_check_s=0.05)
    await start_service()
    for _ in range(200):  # the older one asks every 50 ms; no write of its own is needed
        if older.replaced.is_set():
            break
        await asyncio.sleep(0.05)
    assert older.replaced.is_set()


async def test_a_replaced_shard_never_takes_a_newer_instances_entry_for_its_own() -> None:
    """An append in doubt is settled by reading the log's last id; after a takeover that id may be
    the newer instance's entry, so a replaced shard must not apply its own in-doubt entry."""
    log = SimLog()
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), log, ManualClock(), sim_config().shard_settings, 0)  # type: ignore[arg-type]
    actor.start()
    try:
        held = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 3)), now))
        await until_turns(lambda: bool(log.pending), "the reservation's append in flight")
        log.pump("lost")  # not landed, and the caller told so: in doubt until settled
        with pytest.raises(Unavailable):
            await held
        log.submit(0, 1, b"the newer instance's entry 1")
        log.pump("ok")

        async def replaced(_group: int | None = None) -> bool:
            log.fenced = True
            return False

        log.still_owner = replaced  # type: ignore[method-assign]
        actor.request_maintenance()  # settles the doubt
        for _ in range(1000):  # 10 s: a bound, not a timing
            if not actor.in_doubt:
                break
            await asyncio.sleep(0.01)
        assert not actor.in_doubt
        assert (actor.seq, actor.ledger.quantities("A", "S1").reserved) == (0, 0)
        with pytest.raises(Unavailable, match="replaced by a newer one"):
            actor.submit(lambda ledger, now: None)
    finally:
        await actor.stop()


async def test_a_claim_redis_lost_is_not_answered_as_a_newer_instance(start_service: ServiceFactory,
                                                                       redis_url: str) -> None:
    """Redis lost this instance's claim (restarted without its data, a replica that missed it promoted):
    no newer instance exists, so the refusal must not send callers and operators looking for one."""
    service, client = await start_service()
    await client.record_events([receipt("seed", "A", "DC", 10)])
    wiped = aioredis.Redis.from_url(redis_url)
    await wiped.flushall()
    await wiped.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.Reserve(_reserve("after-the-loss", 1))
    assert said(refused.value) == (grpc.StatusCode.UNAVAILABLE, "INSTANCE_REPLACED")  # retryable, as before
    details = refused.value.details() or ""
    assert "lost this instance's claim" in details and "newer" not in details, details
    assert service.failed.is_set() and not service.replaced.is_set()  # stops to be restarted (exit 4), not 3
