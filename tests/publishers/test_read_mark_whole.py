"""The read of new entries and the mark of the gap before them land together or not at all (C4): Redis undoes
nothing of a script that fails half-way, and a mark of another type failed its INCR after XREADGROUP had moved the
group past the gap."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from publishers import PublisherConfig
from publishers._claim import CLAIM
from publishers._reading import Reader


async def three_versions(client: aioredis.Redis, cfg: PublisherConfig) -> None:
    """The channel's stream with versions 1, 2 and 3 at ids 1-0, 2-0 and 3-0, and the publisher's group before them."""
    await client.xgroup_create(cfg.stream, cfg.group, "0", mkstream=True)
    for version in (1, 2, 3):
        await client.xadd(cfg.stream, {"version": str(version)}, id=f"{version}-0")


@pytest.mark.parametrize("stray", [("rpush", "an operator's"), ("set", "yes"), ("set", "01"),
                                   ("set", "9223372036854775807"), ("set", "99999999999999999999")])
async def test_a_mark_of_another_type_refuses_the_read_before_the_group_moves_past_the_gap_C4(
        redis_url: str, stray: tuple[str, str]) -> None:
    """Versions 1 and 2 trimmed unread: the read of 3 owes them (the mark raised). With the mark of another type the
    group was left past them, nothing owed, and the next read found no gap: their keys' newest values (a stock-out
    among them) never reached the destination. Refused first, the group stays before the gap, owed once the key is
    removed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await three_versions(client, cfg)
        await client.xtrim(cfg.stream, minid="3-0", approximate=False)
        command, value = stray
        await getattr(client, command)(cfg.redeliver_all_key, value)
        with pytest.raises(ResponseError):
            await Reader(cfg, client).read_new(None, 0)
        (group,) = await client.xinfo_groups(cfg.stream)
        assert group["last-delivered-id"] == b"0-0" and group["pending"] == 0
        await client.delete(cfg.redeliver_all_key)
        new = await Reader(cfg, client).read_new(None, 0)
        assert [entry_id for entry_id, _ in new.entries] == ["3-0"] and new.mark == 1
    finally:
        await client.aclose()


async def test_a_mark_of_another_type_refuses_the_takeover_s_claim_before_it_drops_the_trimmed_C4(
        redis_url: str) -> None:
    """A takeover's claim of entries trimmed while pending (Redis 7's XAUTOCLAIM drops them from the pending list
    itself) owes their keys by the same mark: failing on it after the claim, the ids were gone with nothing owed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await three_versions(client, cfg)
        await client.xreadgroup(cfg.group, "a-holder-gone", {cfg.stream: ">"}, count=2)
        await client.xtrim(cfg.stream, minid="3-0", approximate=False)  # 1 and 2 trimmed while pending
        await client.set(cfg.lease_key, "holder/1/0")
        await client.rpush(cfg.redeliver_all_key, "an operator's")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await client.eval(CLAIM, 3, cfg.lease_key, cfg.stream, cfg.redeliver_all_key, "holder/1/0", cfg.group,
                              cfg.consumer, "0-0", 10, "0")
        assert (await client.xpending(cfg.stream, cfg.group))["pending"] == 2
        await client.delete(cfg.redeliver_all_key)
        reply = await client.eval(CLAIM, 3, cfg.lease_key, cfg.stream, cfg.redeliver_all_key, "holder/1/0", cfg.group,
                                  cfg.consumer, "0-0", 10, "0")
        assert sorted(reply[2]) == [b"1-0", b"2-0"] and reply[3] == 1
    finally:
        await client.aclose()
