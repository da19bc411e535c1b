"""The service on a Redis Cluster while the slot of a shard's group migrates to another primary
(``CLUSTER SETSLOT MIGRATING/IMPORTING``, ``MIGRATE``, ``SETSLOT NODE``, as ``redis-cli --cluster
reshard`` does): a write refused meanwhile never lands, the shard says in its log why it refuses, and
once the slot is served by its new primary the shard answers again with nothing lost (R7, R8)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
import redis

from atp_client import AtpClient
from atp_service import AtpService
from atp_service.app.keyspace import StartupError
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.keys import Keyspace
from tests.atp_service.app.test_healthcheck import starting_until_logged
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.conftest import test_config as make_config
from tests.slot_moves import SlotMove

CLUSTER = {"redis_cluster": True, "input_streams": ()}


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    """``start_service`` of the test suite, on the shared cluster."""
    async with services_on(cluster_url, **CLUSTER) as start:
        yield start


async def test_a_shard_whose_slot_is_migrating_says_why_it_refuses_and_answers_once_the_slot_has_moved(
        start_service: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove],
        caplog: pytest.LogCaptureFixture) -> None:
    service, client = await start_service(redis_timeout_s=1.0)
    shard, move = await _move_of_as_slot(service, client, redis_cluster, moves)
    caplog.set_level(logging.WARNING, logger="atp_service.engine.pipeline")
    move.begin()
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # the group's scripts are refused TRYAGAIN meanwhile
        await client.reserve("during", [("A", "S1", 1)], ttl_seconds=600)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    failed = [r for r in caplog.records if getattr(r, "event", None) == "append_failed"
              and getattr(r, "shard", None) == shard]
    assert failed and failed[0].reason == "refused", failed  # type: ignore[attr-defined]
    assert "rehashing" in failed[0].getMessage(), failed[0].getMessage()  # Redis's TRYAGAIN, in its words
    moves.remove(move)
    move.finish()
    await until_answered(client)
    with pytest.raises(grpc.aio.AioRpcError) as absent:  # refused by Redis: it never landed, nor can it now
        await client.get_reservation("during")
    assert absent.value.code() == grpc.StatusCode.NOT_FOUND
    (position,) = await client.availability([("A", "S1")])
    assert (position.on_hand, position.reserved) == (10, 1)


async def until_answered(client: AtpClient, bound_s: float = 20.0) -> None:
    """A reservation at the migrated shard, retried while it is UNAVAILABLE (the shard settling)."""
    deadline = asyncio.get_running_loop().time() + bound_s
    while True:
        try:
            await client.reserve("after", [("A", "S1", 1)], ttl_seconds=600)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_write_refused_by_a_migrating_slot_is_answered_not_applied_and_never_in_doubt(
        start_service: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """TRYAGAIN, ASK and MOVED are answered before a script runs: the write certainly never landed.
    Each Reserve meanwhile is refused UNAVAILABLE saying so (not OUTCOME_UNKNOWN, 'log storage
    unreachable'), and the shard takes the next one at once rather than waiting to settle (R7)."""
    service, client = await start_service(redis_timeout_s=1.0)
    _, move = await _move_of_as_slot(service, client, redis_cluster, moves)
    move.begin()
    for attempt in range(3):  # the second and third too: no settle left the shard refusing everything
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.reserve(f"during-{attempt}", [("A", "S1", 1)], ttl_seconds=600)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "OUTCOME_UNKNOWN" not in str(refused.value.trailing_metadata()), refused.value.details()
        assert "nothing was applied" in (refused.value.details() or ""), refused.value.details()
        assert "TRYAGAIN" in (refused.value.details() or ""), refused.value.details()
    moves.remove(move)
    move.finish()
    await until_answered(client)
    (position,) = await client.availability([("A", "S1")])
    assert (position.on_hand, position.reserved) == (10, 1)


async def _move_of_as_slot(service: AtpService, client: AtpClient, redis_cluster: EmbeddedCluster,
                           moves: list[SlotMove]) -> tuple[int, SlotMove]:
    """10 units of A at S1, and the move (not begun) of its shard's slot to another primary: (shard, move)."""
    assert service.engine is not None
    shard = service.engine.place("A")
    await client.record_events([receipt("s1", "A", "S1", 10)])
    log_key = f"atp:{{g{shard}}}:log"
    source = service.engine.log_client.get_node_from_key(log_key).port
    with redis.Redis(host="127.0.0.1", port=source) as admin:
        slot = int(admin.execute_command("CLUSTER", "KEYSLOT", log_key))
    target = next(node.port for node in redis_cluster.primaries if node.port != source)
    move = SlotMove(redis_cluster, slot, source, target)
    moves.append(move)
    return shard, move


async def test_a_write_answered_ask_once_its_group_s_keys_moved_is_not_applied_and_its_retry_lands_once(
        start_service: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """Every key of the group moved to the target while the slot is still migrating: the source
    answers the group's scripts ASK (the service never follows it: a write is never sent twice).
    The write is refused, nothing applied, the shard takes the next at once, and once the slot is
    the target's the same reservation retried lands once (R7), with a replica confirming it."""
    service, client = await start_service(redis_timeout_s=1.0, redis_wait_replicas=1, redis_wait_timeout_ms=500)
    _, move = await _move_of_as_slot(service, client, redis_cluster, moves)
    move.begin()
    move.move_keys()
    for _ in range(2):  # the second too: the first left nothing in doubt
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.reserve("during", [("A", "S1", 1)], ttl_seconds=600)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ASK" in (refused.value.details() or ""), refused.value.details()
        assert "nothing was applied" in (refused.value.details() or ""), refused.value.details()
    (position,) = await client.availability([("A", "S1")])
    assert (position.on_hand, position.reserved) == (10, 0)
    moves.remove(move)
    move.finish()
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # the same id again, until the shard answers
        try:
            assert (await client.reserve("during", [("A", "S1", 1)], ttl_seconds=600)).state == 1
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
    assert (await client.reserve("during", [("A", "S1", 1)], ttl_seconds=600)).state == 1  # a replay
    (position,) = await client.availability([("A", "S1")])
    assert (position.on_hand, position.reserved) == (10, 1)
    await service.stop(grace_s=0.1)
    _, again = await start_service(redis_timeout_s=1.0)  # recovered from the target's log: held once
    (position,) = await again.availability([("A", "S1")])
    assert (position.on_hand, position.reserved) == (10, 1)


async def test_a_start_whose_write_a_migrating_slot_answers_ask_waits_for_the_move(
        cluster_url: str, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """A reshard under way while the service starts (``redis-cli --cluster rebalance`` moves slot after
    slot): the start's writes go to the primary its slot map names and are answered ASK there (the slot
    migrating, the key on the target: the claim's epoch key, absent until then), or MOVED (the slot
    moved since the map was read), as they are answered TRYAGAIN mid-move. Each passes once the move is
    done, without anyone touching the service: the start waits it out (health NOT_SERVING) as it waits
    out TRYAGAIN, and is not refused as for its data (a StartupError, exit status 2: never restarted)."""
    claims = Keyspace(make_config().key_prefix).claims
    with redis.RedisCluster.from_url(cluster_url) as admin:
        slot, source = admin.keyslot(claims), int(admin.get_node_from_key(claims).port)
    target = next(node.port for node in redis_cluster.primaries if node.port != source)
    move = SlotMove(redis_cluster, slot, source, target)
    moves.append(move)
    move.begin()
    service = AtpService(make_config(redis_timeout_s=1.0, **CLUSTER), cluster_url)
    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done(), starting.exception()  # waiting, not refused
            moves.remove(move)
            move.finish()
            await asyncio.wait_for(starting, 30)
        assert service.engine is not None
    finally:
        await service.stop(grace_s=0.1)


async def test_a_start_on_a_cluster_node_without_redis_cluster_is_refused_not_waited_for_ever(cluster_url: str) -> None:
    """A redirection (MOVED, ASK) to a client of one Redis says its URL names a node of a cluster (``redis_cluster``
    off): no wait cures it. Waited out as a reshard's is on a cluster, the start waited for ever saying it waited for
    Redis, health NOT_SERVING and no exit status a supervisor could act on."""
    port = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
    with redis.Redis(host="127.0.0.1", port=port) as node:  # a prefix whose keyspace checks this node redirects
        prefix = next(p for p in (f"p{n}:" for n in range(1000)) if _redirected(node, Keyspace(p).meta))
    service = AtpService(make_config(key_prefix=prefix, input_streams=()), cluster_url)
    try:
        with pytest.raises(StartupError, match="--redis-cluster"):
            await asyncio.wait_for(service.start(), 10)
    finally:
        await service.stop(grace_s=0)


def _redirected(node: redis.Redis, key: str) -> bool:
    try:
        node.exists(key)
    except redis.exceptions.MovedError:
        return True
    return False
