"""A publisher's scripts with a command taken out of its Redis user's ACL while it runs (``ACL SETUSER … -incr``):
Redis checks each command of a script against the ACL as it runs and undoes nothing before the one it refuses, and the
start's check (``_permissions.py``) cannot see a change made after it. Each script that writes more than once asks the
ACL (``redis.acl_check_cmd``, ``scripts.ACL_LUA``) for every command it may run after its first write before it: refused
whole (DENIED), nothing moved, the same as the service's scripts (C4)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from publishers import PublisherConfig
from publishers._claim import CLAIM
from publishers._reading import Reader
from tests.atp_service.acl_user import AclUser, acl_user
from tests.publishers.test_dead_letters_whole import TOKEN, dead_letter
from tests.publishers.test_read_mark_whole import three_versions


@pytest.fixture
async def user(redis_url: str) -> AsyncIterator[AclUser]:
    async with acl_user(redis_url) as made:
        yield made


async def test_a_read_across_a_gap_whose_incr_the_acl_took_away_moves_no_group_C4(user: AclUser) -> None:
    """Versions 1 and 2 trimmed unread, the read of 3 owes them by the mark (INCR after XREADGROUP): refused there, the
    group was left past them and nothing owed — the next read found no gap, their keys' newest values (a stock-out
    among them) never reached the destination. Refused whole now: the group before the gap, owed once allowed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(user.url)
    try:
        await three_versions(client, cfg)
        await client.xtrim(cfg.stream, minid="3-0", approximate=False)
        await user.take_away("incr")
        with pytest.raises(ResponseError, match=r"^DENIED INCR"):
            await Reader(cfg, client).read_new(None, 0)
        (group,) = await user.admin.xinfo_groups(cfg.stream)
        assert group["last-delivered-id"] == b"0-0" and group["pending"] == 0  # was: 3-0, 1 pending
        await user.give_back("incr")
        new = await Reader(cfg, client).read_new(None, 0)
        assert [entry_id for entry_id, _ in new.entries] == ["3-0"] and new.mark == 1
    finally:
        await client.aclose()


async def test_a_takeover_s_claim_whose_incr_the_acl_took_away_drops_no_trimmed_entry_C4(user: AclUser) -> None:
    """XAUTOCLAIM drops the pending entries it finds trimmed from the pending list itself, and the claim owes their
    keys by the mark (INCR after it): refused there, the ids were gone with nothing owed. Refused whole now: still
    pending, owed once allowed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(user.url)

    async def claim() -> list[object]:
        return await client.eval(CLAIM, 3, cfg.lease_key, cfg.stream, cfg.redeliver_all_key, TOKEN, cfg.group,
                                 cfg.consumer, "0-0", 10, "0")
    try:
        await three_versions(client, cfg)
        await client.xreadgroup(cfg.group, "a-holder-gone", {cfg.stream: ">"}, count=2)
        await client.xtrim(cfg.stream, minid="3-0", approximate=False)  # 1 and 2 trimmed while pending
        await client.set(cfg.lease_key, TOKEN)
        await user.take_away("incr")
        with pytest.raises(ResponseError, match=r"^DENIED INCR"):
            await claim()
        assert (await user.admin.xpending(cfg.stream, cfg.group))["pending"] == 2  # was: 0, nothing owed
        await user.give_back("incr")
        reply = await claim()
        assert sorted(reply[2]) == [b"1-0", b"2-0"] and reply[3] == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize(("command", "max_keys"), [("hset", 10), ("incr", 0)])  # 0: past the bound, the mark raised
async def test_dead_letters_whose_owed_keys_write_the_acl_took_away_are_not_written_C4(
        user: AclUser, command: str, max_keys: int) -> None:
    """The dead letters' XADD landed, the HSET of the keys they leave owed (or the INCR of a resync past the bound)
    refused: the keys never remembered, their newest values never redelivered, and the dead letter written again at
    each delivery tried again (the entries stay pending). Refused whole now: nothing written, written once allowed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(user.url)
    try:
        await client.set(cfg.lease_key, TOKEN)
        await user.take_away(command)
        for _ in range(2):
            with pytest.raises(ResponseError, match=rf"^DENIED {command.upper()}"):
                await dead_letter(client, cfg, max_keys)
        assert await user.admin.xlen(cfg.dead_letter_stream) == 0  # was: 2, one a try
        await user.give_back(command)
        assert await dead_letter(client, cfg, 10) == 0
        assert await user.admin.xlen(cfg.dead_letter_stream) == 1
        assert await user.admin.hgetall(cfg.redeliver_key) == {b"A\t": b"5 retry"}
    finally:
        await client.aclose()
