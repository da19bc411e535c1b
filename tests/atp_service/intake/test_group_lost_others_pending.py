"""The group made again at the bound of the token Redis holds (``intake/bounds.py``) must start before every entry
pending in the group when the token was told, whichever consumer held it: another process's reader (``--processes``,
a leased process under its own name), or one gone for good whose entries were not claimed yet. The group deleted takes
their pending list with it; made again past them, such an entry that Redis holds is never delivered again to anyone,
never applied nor dead-lettered (E6, R7). Real redis-server; the reader driven step by step."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from atp_service.intake.unacked import before
from tests.atp_service.intake.claim_helpers import POS, claiming_ingestor, orphan_behind_the_newest_read


async def test_an_entry_pending_with_another_consumer_as_the_token_was_told_comes_again_in_the_group_made_again(
        redis_url: str) -> None:
    """Defect: the tag script read the oldest entry pending with this consumer only: the entry another consumer held
    pending, behind the newest this reader read, was past the bound kept under the token, and the group made again
    after the newest entry read never delivered it again."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        orphan, newest, read = await orphan_behind_the_newest_read(r, ingestor)  # the orphan: another's, pending
        assert read == [newest]
        r.xack(POS, "atp", newest)  # applied
        await ingestor._tag()  # told Redis, the orphan still pending with the other consumer
        r.xgroup_destroy(POS, "atp")
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert (POS, orphan) in [(stream, entry_id) for stream, entry_id, _ in again], \
        "the entry another consumer held pending was lost: the group made again past it"


async def test_the_line_of_a_group_made_again_says_where_it_reads_from(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """``ingest_group_made_again`` carries ``after`` (docs/OPERATIONS.md: where the group reads from, ``0`` for the
    stream's start — the token Redis holds decides it): an operator told to read it found no such field."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        orphan, newest, _ = await orphan_behind_the_newest_read(r, ingestor)
        r.xack(POS, "atp", newest)
        await ingestor._tag()
        r.xgroup_destroy(POS, "atp")
        with caplog.at_level(logging.WARNING):
            await ingestor._create_groups(again=True)
    finally:
        await ingestor._client.aclose()
    made = [rec for rec in caplog.records if getattr(rec, "event", None) == "ingest_group_made_again"]
    assert [getattr(rec, "after", None) for rec in made] == [before(orphan).decode()], "no field says where"
