"""A dead consumer's pending entries claimed on one input stream, then the claim of the next stream
refused (its group deleted, as an operator's XGROUP DESTROY of each stream in turn does): the entries
the first claim took were dropped with the refusal, in this reader's pending list but unknown to
``Unacked``, and the group of their stream, deleted too, was made again after the newest entry read —
never delivered again, no dead letter. Real redis-server; the reader driven step by step."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.atp_service.intake.claim_helpers import POS, claiming_ingestor, orphan_behind_the_newest_read

WMS = "atp:in:wms"


async def test_entries_claimed_before_the_next_stream_s_claim_failed_are_read_again_once_their_group_is_lost(
        redis_url: str) -> None:
    """Defect: the entry a dead consumer left pending on ``POS`` was claimed, the claim on ``WMS`` then
    refused NOGROUP: the claimed entry was dropped with the refusal, and ``POS``'s group, deleted too,
    was made again after the newest entry read there — the entry never delivered again."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS, WMS)
    try:
        orphan, newest, read = await orphan_behind_the_newest_read(r, ingestor)
        assert read == [newest]
        r.xack(POS, "atp", newest)  # applied
        claim = ingestor._claims.claim

        async def groups_destroyed_after_the_first(stream: str, *args: Any) -> Any:
            got = await claim(stream, *args)
            if stream == POS:  # the operator's XGROUP DESTROY of each stream, landing between the claims
                r.xgroup_destroy(WMS, "atp")
                r.xgroup_destroy(POS, "atp")
            return got

        ingestor._claims.claim = groups_destroyed_after_the_first  # type: ignore[method-assign]
        with pytest.raises(redis.ResponseError, match="NOGROUP"):
            await ingestor._claim()
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert (POS, orphan) in [(stream, entry_id) for stream, entry_id, _ in again], "the claimed entry was lost"
