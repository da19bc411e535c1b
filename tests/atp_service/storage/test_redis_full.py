"""Redis at its ``maxmemory`` with ``noeviction``: every write that would grow it is refused ``OOM``
before any change, so the refused write certainly did not land."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.exceptions import OutOfMemoryError

from atp_client import AtpClient
from atp_service import EmbeddedRedis
from atp_service.engine import pipeline
from atp_service.storage.durability import Checkpoints
from atp_service.storage.log import LogStore, connect
from reservation import Limits, reserve_command
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def full_able(tmp_path: Path) -> AsyncIterator[tuple[ServiceFactory, redis.Redis]]:
    """Services on a Redis of this test's own, whose ``maxmemory`` the test may lower."""
    with EmbeddedRedis(tmp_path / "redis", appendfsync="always") as server:
        admin = redis.Redis.from_url(server.url)
        async with services_on(server.url) as start:
            yield start, admin
        admin.close()


async def test_a_write_refused_for_memory_says_so_and_the_shard_goes_on(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    """A write Redis refused ``OOM`` was told "outcome unknown (log storage unreachable)" and the
    shard went in doubt: settling fences first, a write a full Redis refuses too, so the shard took
    no writes until a settle retry after Redis had room, and the operator read of an unreachable
    Redis. The refusal is certain: callers are told Redis is out of memory and nothing was applied,
    and the shard answers the next write as soon as Redis has room."""
    start, admin = full_able
    _, client = await start(shards=1)
    await client.record_events([receipt("e1", "A", "DC", 5)])
    fence_before = admin.get("atp:{g0}:fence")
    admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
    try:
        refusal = await refused(client.record_events([receipt("e2", "A", "DC", 1)]))
        assert refusal.code == grpc.StatusCode.UNAVAILABLE
        assert refusal.reason == "STORAGE_UNREACHABLE"
        assert "Redis is out of memory" in refusal.message and "nothing was applied" in refusal.message
        (a,) = await client.availability([("A", "DC")])  # reads need no Redis memory
        assert a.on_hand == 5
    finally:
        admin.config_set("maxmemory", 0)
    await client.record_events([receipt("e3", "A", "DC", 2)])  # at once: nothing was in doubt
    (a,) = await client.availability([("A", "DC")])
    assert a.on_hand == 7
    assert admin.get("atp:{g0}:fence") == fence_before  # not fenced for a refusal that is certain


async def test_writes_pipelined_behind_one_refused_for_memory_leave_the_shard_out_of_doubt_R7(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    """Under load a shard has later batches behind the refused one: in the same script call (their
    futures not yet answered when the first failure was handled) or waiting for the next group
    commit (never sent). They were put in doubt: the shard refused writes "log storage unreachable"
    and raised its fence once Redis had room. They cannot land either: nothing is in doubt."""
    start, admin = full_able
    service, client = await start(shards=1)
    assert service.engine is not None
    await client.record_events([receipt("e0", "A", "DC", 5)])
    fence_before = admin.get("atp:{g0}:fence")
    admin.config_set("maxmemory", 1)
    try:
        told = await asyncio.gather(*(client.record_events([receipt(f"e{i}", "A", "DC", 1)]) for i in range(1, 200)),
                                    return_exceptions=True)
        for refusal in told:
            assert isinstance(refusal, grpc.aio.AioRpcError)
            assert "Redis is out of memory" in (refusal.details() or ""), refusal.details()
        assert not service.engine.actors[0].in_doubt
    finally:
        admin.config_set("maxmemory", 0)
    await client.record_events([receipt("e-after", "A", "DC", 2)])
    (a,) = await client.availability([("A", "DC")])
    assert a.on_hand == 7
    assert admin.get("atp:{g0}:fence") == fence_before


async def test_a_reservation_across_shards_refused_for_memory_says_so(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    """The same for a change spanning shards (one script call for both): it was told "outcome
    unknown (log storage unreachable)"; it is certainly not applied, and is retried afresh once
    Redis has room — the stock it would have held stays available meanwhile."""
    start, admin = full_able
    service, client = await start(shards=4)
    assert service.engine is not None
    by_shard: dict[int, str] = {}
    for i in range(1000):
        by_shard.setdefault(service.engine.place(f"SKU-{i}"), f"SKU-{i}")
    first, second = list(by_shard.values())[:2]
    await client.record_events([receipt("e1", first, "DC", 5), receipt("e2", second, "DC", 5)])
    admin.config_set("maxmemory", 1)
    try:
        refusal = await refused(client.reserve("r1", [(first, "DC", 2), (second, "DC", 3)], ttl_seconds=600))
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNREACHABLE")
        assert "Redis is out of memory" in refusal.message and "nothing was applied" in refusal.message
        a, b = await client.availability([(first, "DC"), (second, "DC")])
        assert (a.available, b.available) == (5, 5)
    finally:
        admin.config_set("maxmemory", 0)
    held = await client.reserve("r1", [(first, "DC", 2), (second, "DC", 3)], ttl_seconds=600)
    assert held.state == 1 and not held.replayed
    a, b = await client.availability([(first, "DC"), (second, "DC")])
    assert (a.available, b.available) == (3, 2)


async def test_a_reserve_whose_caller_gave_up_before_redis_refused_it_for_memory_leaves_no_route(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    """A Reserve whose caller gave up while its append was on its way (its record in memory then, so its
    route was kept), the append then refused OOM: certainly not in the log, it was never in doubt, so no
    settle told the routes it was lost (``unhome``) — its route to no record stayed for the process's life
    (in leased mode, forwarding GetReservation/Confirm to a group that holds nothing). Found by
    ``python -m tests.sim --seed 14 --redis-full``."""
    start, admin = full_able
    service, client = await start(shards=1, redis_timeout_s=60)
    engine = service.engine
    assert engine is not None
    actor = engine.actors[0]
    await client.record_events([receipt("e1", "A", "DC", 5)])
    cmd = reserve_command(reservation_id="r-gone", order_ref="o", channel="web", lines=[("A", "DC", 1)],
                          ttl_seconds=600, allow_partial=False, limits=Limits())
    admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the append waits, its record in memory
    try:
        caller = asyncio.ensure_future(engine.reserve(cmd))
        await until(lambda: actor._inflight and actor.ledger.reservation("r-gone") is not None, "the append sent")
        caller.cancel()  # the caller gives up: its record may yet be durable, so the route stays for now
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert engine.routes.homes.get("r-gone") == 0
        admin.config_set("maxmemory", 1)
        admin.execute_command("CLIENT", "UNPAUSE")  # the append reaches a full Redis: refused OOM
        await until(lambda: not actor._inflight, "the append answered")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.config_set("maxmemory", 0)
    assert not actor.in_doubt and actor.ledger.reservation("r-gone") is None
    assert "r-gone" not in engine.routes.homes, "a route to no record outlived a refusal for memory"


async def test_a_redis_whose_policy_cannot_be_read_is_named_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Managed Redis often forbids ``CONFIG``: the service cannot tell whether Redis may evict its
    logs, fences or claims, and started without a word of it — the operator was never asked to
    check ``maxmemory-policy``. It starts, and says so."""
    with EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "CONFIG", ""]) as server:
        async with services_on(server.url) as start:
            await start(shards=1)
    assert any("maxmemory-policy" in r.getMessage() and "cannot be read" in r.getMessage()
               and r.levelname == "WARNING" for r in caplog.records), [r.getMessage() for r in caplog.records]


async def test_a_redis_filled_by_the_log_heals_by_the_snapshot_trimming_it_and_loses_nothing_R7(
        full_able: tuple[ServiceFactory, redis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """The log filled Redis (``maxmemory``, ``noeviction``): the snapshot that trims it wrote the
    snapshot first, a write a full Redis refuses, so the log was never trimmed and every write was
    refused "out of memory" until an operator gave Redis room. The snapshot and its trim go through
    a full Redis: the service heals by itself, and a restart reads back every acknowledged
    Reserve."""
    start, admin = full_able
    # No snapshot until Redis is full and has refused a write: one falling due by its interval while
    # the log filled trimmed it (on a slow host the filling never reached its size, and ran on past
    # the test's timeout), and one between the filling and the refusal made the room the refusal
    # needed to be missing. The snapshot that heals is the one due once they are let through.
    snapshots_let_through = asyncio.Event()
    due = Checkpoints.due
    monkeypatch.setattr(Checkpoints, "due", lambda checkpoints, seq, force=False:
                        snapshots_let_through.is_set() and due(checkpoints, seq, force))
    # Resolved reservations forgotten at once: the snapshot stays small beside the log it trims (kept
    # for the retention, the filling's ~10,000 made a snapshot of ~60 % of the log, and the room the
    # trim made hung on a few kilobytes).
    service, client = await start(shards=1, snapshot_every_entries=10_000_000, snapshot_interval_s=1.0,
                                  limits=Limits(retention_ms=1))
    await client.record_events([receipt("stock", "A", "DC", 1_000_000)])
    await _log_filled(client, admin, 1 << 20)
    memory = admin.info("memory")
    log_bytes = int(admin.memory_usage("atp:{g0}:log") or 0)
    # Over the limit by a sixth of the log, whatever the clients' buffers hold: only a trim makes room.
    admin.config_set("maxmemory", int(memory["used_memory"]) - int(memory["mem_clients_normal"]) - log_bytes // 6)
    refusal = await refused(client.reserve("refused", [("A", "DC", 1)], ttl_seconds=3600))
    assert "Redis is out of memory" in refusal.message, refusal.message
    assert admin.exists("atp:{g0}:snap") == 0, "a snapshot was written before Redis was full"
    snapshots_let_through.set()
    healed_by = asyncio.get_running_loop().time() + 60
    while True:  # a snapshot falls due within snapshot_interval_s; its trim makes room
        try:
            await client.reserve("after", [("A", "DC", 1)], ttl_seconds=3600)
            break
        except grpc.aio.AioRpcError as exc:
            assert "Redis is out of memory" in (exc.details() or ""), exc.details()
            assert asyncio.get_running_loop().time() < healed_by, "never healed: the log is never trimmed"
            await asyncio.sleep(0.2)  # a poll's pace, bounded by ``healed_by``: the reserve answered is the event
    assert admin.xlen("atp:{g0}:log") <= 2  # trimmed behind the snapshot
    (before,) = await client.availability([("A", "DC")])
    record = await client.get_reservation("after")
    await client.close()
    await service.stop(grace_s=0.1)
    _, again = await start(shards=1)
    (after,) = await again.availability([("A", "DC")])
    assert (after.on_hand, after.reserved) == (before.on_hand, before.reserved) == (1_000_000, 1)
    assert await again.get_reservation("after") == record


async def _log_filled(client: AtpClient, admin: redis.Redis, log_bytes: int) -> list[str]:
    """Reserve and release until shard 0's log holds ``log_bytes``; the reservations' ids."""
    held: list[str] = []
    while int(admin.memory_usage("atp:{g0}:log") or 0) < log_bytes:
        ids = [f"r{len(held) + i}" for i in range(100)]
        await asyncio.gather(*(client.reserve(r, [("A", "DC", 1)], ttl_seconds=3600) for r in ids))
        await asyncio.gather(*(client.release(r) for r in ids))
        held += ids
    return held


async def test_a_settle_raises_the_fence_on_a_full_redis_R7(tmp_path: Path) -> None:
    """A write in doubt (its reply lost, a timeout) is settled by raising the shard's fence, then
    reading the log (R7). On a full Redis that SET was refused ``OOM`` like any write, so a shard
    whose write went in doubt while Redis was full stayed in doubt — every later write refused —
    until an operator gave Redis room, even where the snapshot's trim would have made it. The fence
    (one small number a shard) goes up on a full Redis; appends stay refused."""
    with EmbeddedRedis(tmp_path / "redis", appendfsync="always") as server:
        client = connect(server.url, 5.0)
        store = LogStore(client, "t:", pipeline_max=64)
        await store.claim(1)
        await store.submit(0, 1, b"one")
        await client.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
        try:
            before = int(await client.get("t:{g0}:fence") or 0)
            await store.fence(0)
            assert int(await client.get("t:{g0}:fence")) > before
            with pytest.raises(OutOfMemoryError):
                await store.submit(0, 2, b"two")
        finally:
            await client.config_set("maxmemory", 0)
        await client.aclose()


async def test_refusals_of_a_full_redis_are_logged_at_a_bounded_rate_with_what_was_left_out(
        full_able: tuple[ServiceFactory, redis.Redis], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write refused by a full Redis wrote a WARNING, with no ``event`` and often the same entry
    number: thousands of lines a minute flooded the log pipeline while the operator needed it. A
    shard writes one ``append_failed`` line per ``APPEND_FAILURE_LOG_EVERY_S`` with its reason, the
    next line saying how many were left out; the counter has every failure."""
    interval_s = 1.0
    monkeypatch.setattr(pipeline, "APPEND_FAILURE_LOG_EVERY_S", interval_s)
    start, admin = full_able
    service, client = await start(shards=1)
    await client.record_events([receipt("e0", "A", "DC", 5)])
    admin.config_set("maxmemory", 1)
    try:
        began = time.monotonic()
        for n in range(40):
            await refused(client.record_events([receipt(f"full-{n}", "A", "DC", 1)]))
        took_s = time.monotonic() - began
        assert 1 <= len(_failure_lines(caplog)) <= 2 + took_s / interval_s, [r.getMessage() for r in caplog.records]
        deadline = time.monotonic() + 60
        while not any(getattr(r, "left_out", 0) for r in _failure_lines(caplog)):  # once the interval has passed
            assert time.monotonic() < deadline, "no line said how many were left out"
            await refused(client.record_events([receipt(f"more-{time.monotonic()}", "A", "DC", 1)]))
            await asyncio.sleep(0.1)
    finally:
        admin.config_set("maxmemory", 0)
    lines = _failure_lines(caplog)
    assert all((getattr(r, "reason", None), getattr(r, "shard", None), r.levelname) == ("out_of_memory", 0, "WARNING")
               for r in lines)
    failures = service.metrics.registry.get_sample_value(
        "atp_log_append_failures_total", {"reason": "out_of_memory"}) or 0
    assert len(lines) + sum(getattr(r, "left_out", 0) for r in lines) == failures >= 40


def _failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "append_failed"]
