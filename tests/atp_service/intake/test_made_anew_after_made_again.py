"""A stream deleted and written anew from low ids soon after its group was made again below the newest entry the reader
read (another consumer's entry pending before it): before the reader read anything from the group made again, which
another process's reader read, the reader held no entry whose fields it knew there. Every entry of the stream written
anew is delivered all the same (``unread._MAKE`` answers the newest entry at or before where it made the group, with
its fields' digest: ``Unacked.starts_at``). Real redis-server; the reader driven step by step."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_service.intake.unacked import before
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.claim_helpers import POS, T, claiming_ingestor


@pytest.mark.parametrize("old, anew", [
    ([], ["5-0", "30-0"]),
    (["5-0"], ["5-0", "8-0", "30-0"]),
], ids=["no-entry-before-the-start", "another-entry-at-the-one-before-the-start"])
async def test_a_stream_written_anew_before_the_reader_read_from_its_group_made_again_is_read_whole(
        redis_url: str, old: list[str], anew: list[str]) -> None:
    """Defect: the group made again after 9-18446744073709551615 (before 10-0, pending with another consumer), the
    reader kept that id as the newest entry read, with no fields' digest: no entry was read there. Another process's
    reader read what the group delivered again; the stream was then deleted and written anew from low ids past that id.
    Told by its ids alone, it was taken for the stream read and its group made again after the same bound: the new
    entries up to it never delivered (nothing pending, nothing dead-lettered)."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        await ingestor._create_groups()
        for entry_id in old:  # read and applied
            r.xadd(POS, F(f"old-{entry_id}", "RECEIPT", "A", "S1", 1, T).fields(), id=entry_id)
            assert [e[1] for e in await ingestor._read(None, block=None)] == [entry_id.encode()]
            r.xack(POS, "atp", entry_id)
        r.xadd(POS, F("pending", "RECEIPT", "A", "S1", 3, T).fields(), id="10-0")
        r.xreadgroup("atp", "other", {POS: ">"}, count=10)  # another process's reader holds it pending
        r.xadd(POS, F("newest", "RECEIPT", "A", "S1", 1, T).fields(), id="20-0")
        assert [e[1] for e in await ingestor._read(None, block=None)] == [b"20-0"]
        r.xack(POS, "atp", "20-0")
        await ingestor._tag()  # Redis holds the bound: before 10-0
        r.xgroup_destroy(POS, "atp")
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        assert r.xinfo_groups(POS)[0]["last-delivered-id"] == before(b"10-0")
        assert len(r.xreadgroup("atp", "other", {POS: ">"}, count=10)[0][1]) == 2  # the other reader takes them
        with r.pipeline(transaction=True) as pipe:  # deleted and written anew by a producer giving its own ids
            pipe.delete(POS)
            for entry_id in anew:
                pipe.xadd(POS, F(f"new-{entry_id}", "RECEIPT", "A", "S1", 1, T).fields(), id=entry_id)
            pipe.execute()
        await ingestor._create_groups(again=True)  # the read after it refused NOGROUP
        read = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert [entry_id.decode() for _, entry_id, _ in read] == anew, "entries of the stream written anew never delivered"
