"""A claim refused ``NOGROUP`` (the group deleted, an operator's XGROUP DESTROY, a Redis restored without it, between
the reader's last read and its claim): Redis ran nothing of it (``XAUTOCLAIM`` refused before it took an entry), so it
took nothing into the reader's pending list. ``Unacked.claiming`` counted every entry from the claim's cursor on (0-0:
the whole stream) as held all the same, and the group made again read the stream from its start: every entry read
before delivered and judged again, those dead-lettered written to the dead-letter stream a second time. Real
redis-server; the reader driven step by step."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.claim_helpers import POS, T, claiming_ingestor, read_acknowledged_and_tagged


async def test_a_claim_refused_for_its_group_lost_leaves_the_group_made_again_after_the_newest_entry_read(
        redis_url: str) -> None:
    """Defect: the claim refused NOGROUP counted the whole stream as held, and the group made again delivered every
    entry read and acknowledged before again."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        old, read = await read_acknowledged_and_tagged(r, ingestor)  # tagged: a group made again reads after them
        assert read == old
        r.xgroup_destroy(POS, "atp")  # between the last read and the claim
        with pytest.raises(ResponseError, match="NOGROUP"):
            await ingestor._claim()
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        newest = r.xadd(POS, F("new", "RECEIPT", "A", "S1", 1, T).fields())
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert [entry_id for _, entry_id, _ in again] == [newest], "entries read and acknowledged before delivered again"
