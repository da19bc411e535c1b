"""R5 across processes (``ownership = leases``, ``engine/ids.py``): a reservation id names one record,
whichever process a Reserve reaches. An id reused with lines whose home group another process owns
is refused ``RESERVATION_ID_REUSED`` naming ``lines``, holding nothing — unary or in a ReserveStream —
while its first content, retried anywhere, answers the original result; and a claim lasts while its
record is remembered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import redis.asyncio as aredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.engine.ids import CLAIM_MARGIN_MS
from tests.atp_service.app.test_processes import (
    balanced,
    group_of,
    members_read,
    owner_of,
    routed,
    skus_in_other_groups,
    start_process,
)
from tests.atp_service.app.test_processes_split import item, reserved, stocked_pair
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name


async def test_an_id_reused_with_lines_homed_at_another_process_is_refused_naming_lines(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (first, client), (second, other) = running
    assert owner_of(running, here)[0] is first and owner_of(running, there)[0] is second
    held = await client.reserve("x-1", [(here, "DC", 2)], ttl_seconds=600)
    assert held.state == pb.RESERVATION_STATE_HELD
    for caller in (client, other):  # sent to either: decided by the owner of ``there``, which knows no x-1
        refusal = await refused(caller.reserve("x-1", [(there, "DC", 3)], ttl_seconds=600))
        assert (refusal.code, refusal.reason, refusal.metadata) == (
            grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_ID_REUSED", {"field": "lines"}), refusal
    assert await reserved(running, there) == 0, "the refused Reserve holds nothing"
    assert second.engine is not None and second.engine.home_of("x-1") is None, "no record of x-1 there"
    again = await other.reserve("x-1", [(here, "DC", 2)], ttl_seconds=600)  # the first content, anywhere
    assert again.replayed and again.lines == held.lines
    for caller in (client, other):
        assert [line.sku for line in (await caller.get_reservation("x-1")).lines] == [here]
    assert (await reserved(running, here), await reserved(running, there)) == (2, 0)


async def test_a_stream_s_item_reusing_an_id_of_another_process_s_group_is_refused_alone(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)
    (_, client), (_, other) = running
    await client.reserve("x-2", [(here, "DC", 1)])
    batches = [[item("x-2", there, 4), item("x-3", there, 1), item("x-2", here, 1)]]
    (answer,) = [list(a.outcomes) async for a in other.reserve_stream(batches)]
    assert [o.reservation_id for o in answer] == ["x-2", "x-3", "x-2"]
    assert answer[0].HasField("error") and answer[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert "lines" in answer[0].error.message
    assert answer[1].response.state == pb.RESERVATION_STATE_HELD
    assert answer[2].response.state == pb.RESERVATION_STATE_HELD and answer[2].response.replayed
    assert (await reserved(running, here), await reserved(running, there)) == (1, 1)


async def test_the_sweep_makes_a_claim_redis_lost_again_and_keeps_a_confirmed_record_s(
        start_process: ServiceFactory, redis_url: str) -> None:
    """A confirmed record has no expiry: its claim is extended by the sweep over the records served
    (``IdGuard.refresh_step``), which also makes a claim Redis lost (or one never made) again."""
    running, here, _ = await stocked_pair(start_process)
    (first, client), _ = running
    await client.reserve("x-4", [(here, "DC", 1)])
    await client.confirm("x-4")
    assert first.engine is not None and first.engine.ids is not None
    guard = first.engine.ids
    key = guard.claims.key("x-4")
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await r.get(key) == str(group_of(here)).encode()
        await r.delete(key)  # Redis back from older data, or a record made before claims were
        guard.refresh_every_s = 0.0
        guard._next_round = 0.0  # a round due now
        # resolved any moment from now, the record is remembered this long: its claim lasts longer
        lasts_ms = first.config.limits.retention_ms + CLAIM_MARGIN_MS // 2
        async def made_again() -> bool:
            if await r.get(key) is not None:
                return True
            guard.refresh_step()  # a pass of the sweep; its claims go to Redis in tasks of their own
            return False

        await until(made_again, "the claim Redis lost made again by the sweep")
        assert await r.get(key) == str(group_of(here)).encode() and await r.pttl(key) > lasts_ms
    finally:
        await r.aclose()


async def test_an_id_homed_at_another_group_is_told_reused_though_the_lines_shard_is_full(
        start_process: ServiceFactory) -> None:
    """RESERVATION_ID_REUSED (7) against SHARD_OVERLOADED (18) with leases: the id's claim (in Redis, durable) is
    read before any shard is asked, so a Reserve reusing an id homed at another group is told so even while the
    shard of its lines has no room; a new id there is shed, and the refused one holds nothing."""
    running = [await start_process(port=held_port(), host="127.0.0.1", mailbox_size=1,
                                   maintenance_interval_ms=3_600_000) for _ in range(2)]  # none takes the place
    await members_read(running)
    await until(lambda: balanced(running) and routed(running), "the groups spread over the 2 processes", 60)
    here, there = skus_in_other_groups(running)
    (owner, client), (_, other) = owner_of(running, there), owner_of(running, here)
    await client.record_events([receipt("in-here", here, "DC", 10), receipt("in-there", there, "DC", 10)])
    await other.reserve("x-9", [(here, "DC", 1)])
    await client.reserve("x-10", [(there, "DC", 1)])
    assert owner.engine is not None
    actor = owner.engine.actors[group_of(there)]
    resume = await actor.pause()
    waiting = asyncio.ensure_future(client.get_reservation("x-10"))  # the mailbox's one place taken
    try:
        await until(lambda: len(actor._mailbox) == 1, "a read queued behind the paused shard")
        reused = await refused(client.reserve("x-9", [(there, "DC", 2)]))
        new = await refused(client.reserve("x-11", [(there, "DC", 1)]))
    finally:
        resume.set_result(None)
    assert (reused.reason, reused.metadata.get("field")) == ("RESERVATION_ID_REUSED", "lines"), reused
    assert new.reason == "SHARD_OVERLOADED", new
    assert (await waiting).state == pb.RESERVATION_STATE_HELD
    assert await reserved(running, there) == 1  # x-10's only
    api = (Path(__file__).parents[3] / "docs" / "API.md").read_text()
    reasons = " ".join(api[api.index("### Reasons"):api.index("<!-- reasons:begin")].split())
    assert "claim names another home" in reasons, "the page says a reused id is told after a full shard"
