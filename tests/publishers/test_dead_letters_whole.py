"""A publisher's dead letters and the keys they leave owed land together or not at all (C4): Redis undoes nothing
of a script that fails half-way, and the owed hash (or the resync's counter) of another type failed the dead
letters' script after its XADDs."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from publishers import PublisherConfig
from publishers._redeliver import DEAD_LETTER

TOKEN = "holder/1/0"


async def dead_letter(client: aioredis.Redis, cfg: PublisherConfig, max_keys: int) -> object:
    """One dead letter of key ``A\\t`` under the lease, as ``Redelivery._write`` sends it."""
    letter = ["channel", "web", "sku", "A", "version", "5", "reason", "HTTP 503", "attempts", "3"]
    return await client.eval(DEAD_LETTER, 4, cfg.lease_key, cfg.dead_letter_stream, cfg.redeliver_key,
                             cfg.redeliver_all_key, TOKEN, 1000, 1, 1, len(letter), *letter, max_keys,
                             "A\t", "5 retry")


@pytest.mark.parametrize("stray", ["redeliver_key", "redeliver_all_key"])
async def test_an_owed_key_of_another_type_refuses_the_dead_letters_before_any_is_written_C4(
        redis_url: str, stray: str) -> None:
    """Each delivery tried again after the refusal (the entries stay pending) wrote the dead letter again, and the
    key owed its newest value was never remembered: written now once the stray key is removed, and only then."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(cfg.lease_key, TOKEN)
        await client.rpush(getattr(cfg, stray), "an operator's")
        for _ in range(2):
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await dead_letter(client, cfg, 0 if stray == "redeliver_all_key" else 10)  # 0: past the bound
        assert await client.xlen(cfg.dead_letter_stream) == 0
        await client.delete(getattr(cfg, stray))
        assert await dead_letter(client, cfg, 10) == 0
        assert await client.xlen(cfg.dead_letter_stream) == 1
        assert await client.hgetall(cfg.redeliver_key) == {b"A\t": b"5 retry"}
    finally:
        await client.aclose()


@pytest.mark.parametrize("held", ["yes", "01", "99999999999999999999"])
async def test_a_resync_mark_that_is_no_count_refuses_the_dead_letters_before_any_is_written_C4(
        redis_url: str, held: str) -> None:
    """A string is the mark's type, but one INCR cannot raise (no count, a leading zero, past 2^63 - 1) failed the
    script at its INCR after the XADDs: the dead letter written at each delivery tried again, the resync never owed."""
    cfg = PublisherConfig(channel="web", group="jsonl")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(cfg.lease_key, TOKEN)
        await client.set(cfg.redeliver_all_key, held)
        for _ in range(2):
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await dead_letter(client, cfg, 0)  # 0: past the bound, the mark raised
        assert await client.xlen(cfg.dead_letter_stream) == 0
    finally:
        await client.aclose()
