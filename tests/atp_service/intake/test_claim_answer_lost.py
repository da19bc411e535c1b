"""A claim of a dead consumer's pending entries whose answer was lost (a timeout: Redis ran it), then the group
deleted (an operator's XGROUP DESTROY, a Redis restored without it) before a pass over the reader's own pending list
read them: the entries the claim took were in this reader's pending list and known nowhere here (``Unacked``), and the
group made again after the newest entry read — never delivered again, no dead letter (E6). Real redis-server; the
reader driven step by step. Found by the simulator: ``--input-streams --processes 3 --partition --suspends
--new-addresses --seed 107``."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.atp_service.intake.claim_helpers import POS, claiming_ingestor, orphan_behind_the_newest_read


async def test_entries_a_claim_whose_answer_was_lost_took_are_read_again_once_their_group_is_lost(
        redis_url: str) -> None:
    """Defect: the entry a dead consumer left pending was claimed by a script whose answer was lost, then the group
    deleted and made again after the newest entry read: the claimed entry was never delivered again."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        orphan, newest, read = await orphan_behind_the_newest_read(r, ingestor)
        assert read == [newest]
        r.xack(POS, "atp", newest)  # applied
        claim = ingestor._claims.claim

        async def answer_lost(stream: str, *args: Any) -> Any:
            await claim(stream, *args)  # Redis ran it: the entry is pending to this reader now
            raise RedisTimeoutError("Timeout reading from socket")

        ingestor._claims.claim = answer_lost  # type: ignore[method-assign]
        with pytest.raises(RedisTimeoutError):
            await ingestor._claim()
        assert r.xpending_range(POS, "atp", "-", "+", 10)[0]["consumer"] == ingestor._config.consumer_name.encode()
        r.xgroup_destroy(POS, "atp")  # before a pass over the reader's own pending list read it
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert (POS, orphan) in [(stream, entry_id) for stream, entry_id, _ in again], "the claimed entry was lost"
