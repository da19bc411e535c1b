"""Processes sharing a keyspace (``ownership = leases``) on a Redis Cluster while the slot of a group no process
holds migrates (``redis-cli --cluster reshard``; left half-done, for good): its lease key absent, Redis answers a read
of its lease and owner keys together TRYAGAIN (on the node importing the slot too), and takes no lease of it
(ASK, TRYAGAIN) until the slot has moved. Every other free group is still taken, and that one once it has moved."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis

from atp_service import AtpService
from atp_service.app.balancing import preference
from atp_service.app.membership import Membership
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.keys import Keyspace
from atp_service.tasks import cancel_and_wait
from tests.conftest import ServiceFactory, services_on
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.slot_moves import SlotMove
from tests.waiting import until

SHARDS = 4
KEYS = Keyspace(make_config().key_prefix)


@pytest.fixture
async def start(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, ownership="leases", lease_ms=5_000, balance_ms=100,
                           shards=SHARDS, input_streams=()) as start:
        yield start


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


async def two_left_free(start: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove],
                        moving_first: bool) -> tuple[AtpService, Membership, int, int, SlotMove]:
    """A process holding every group, its balancing stopped, then giving two groups back (their lease keys
    deleted, their owner keys kept); the slot of one of them migrating (``moving``, the process's most wanted
    of all when ``moving_first``, else its least), the other's not (``stable``): (service, its membership,
    moving, stable, the move)."""
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = service.membership
    assert membership is not None and service.engine is not None
    await until(lambda: owned(service) == set(range(SHARDS)), "every group taken")
    await cancel_and_wait(membership._tasks[1])  # its balance turns stop: this test takes their place
    wanted = sorted(range(SHARDS), key=lambda g: preference(membership.address, g), reverse=True)
    moving, stable = (wanted[0], wanted[1]) if moving_first else (wanted[-1], wanted[0])
    for group in (moving, stable):
        membership.failed(service.engine.actors[group])
    with redis.RedisCluster.from_url(redis_cluster.url) as admin:
        await until(lambda: not admin.exists(*(KEYS.tag(g) + "lease" for g in (moving, stable))), "both given back")
        lease = KEYS.tag(moving) + "lease"
        slot, source = admin.keyslot(lease), int(admin.get_node_from_key(lease).port)
    target = next(node.port for node in redis_cluster.primaries if node.port != source)
    moves.append(move := SlotMove(redis_cluster, slot, source, target))
    move.begin()
    move.move_keys()
    return service, membership, moving, stable, move


async def every_group_taken_once_moved(service: AtpService, membership: Membership, moves: list[SlotMove],
                                       move: SlotMove, moving: int, stable: int) -> None:
    """Every free group but the migrating one taken by the balance; once its slot has moved, the next takes it."""
    assert stable in owned(service)
    assert owned(service) == set(range(SHARDS)) - {moving}
    moves.remove(move)
    move.finish()
    await membership.balance()
    assert owned(service) == set(range(SHARDS))


async def test_a_free_group_s_slot_migrating_keeps_no_other_free_group_from_being_taken(
        start: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """A balance reads every group's lease and owner keys first: read together per slot, the migrating group's pair
    was refused TRYAGAIN and so was the whole read — no group left free was taken by any process, for as long as the
    slot migrated."""
    service, membership, moving, stable, move = await two_left_free(start, redis_cluster, moves, moving_first=False)
    with contextlib.suppress(*STORAGE_ERRORS):  # the migrating group's taking is refused (ASK), after the other's
        await membership.balance()
    await every_group_taken_once_moved(service, membership, moves, move, moving, stable)


async def test_a_free_group_whose_taking_its_migrating_slot_refuses_keeps_no_later_one_from_being_taken(
        start: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """A balance takes its free groups one after the other, the most wanted first: the taking of a group whose slot
    migrates refused (ASK, TRYAGAIN: nothing taken), the balance ended there, and every balance after it — the groups
    after it were taken by no one for as long as the slot migrated."""
    service, membership, moving, stable, move = await two_left_free(start, redis_cluster, moves, moving_first=True)
    with pytest.raises(STORAGE_ERRORS):  # said: the migrating group's taking refused
        await membership.balance()
    await every_group_taken_once_moved(service, membership, moves, move, moving, stable)


async def test_a_process_starting_while_a_free_group_s_slot_migrates_serves_the_groups_it_took(
        start: ServiceFactory, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """The start's first balance is waited out while Redis refuses it (``redis_wait``): a taking refused for as long
    as the slot migrated (for good, a reshard left half-done) refused the whole start, though every other group of
    the process's share was taken and recovered — held and renewed, never served (health NOT_SERVING, every call and
    every call forwarded to it refused), and no other process could take them. The start ends having tried each
    group; the refused one is taken by a later balance, once its slot has moved."""
    first, _, moving, stable, move = await two_left_free(start, redis_cluster, moves, moving_first=False)
    second, _ = await asyncio.wait_for(start(port=held_port(), host="127.0.0.1"), 15)  # before: waited for ever
    assert owned(second) == {stable}
    moves.remove(move)
    move.finish()
    await until(lambda: moving in owned(first) | owned(second), "the group taken once its slot has moved")
