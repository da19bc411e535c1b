"""The reader's tag (``intake/bounds.py``) tells Redis where a group made again may start; it settles nothing. Refused
for good (the token key taken out of the Redis user's ACL while the service serves, a Redis at ``maxmemory`` refusing
its SET), the reader must go on reading and applying new entries: a group made again then starts from the stream's
start (no token answered), a duplicate of no effect (E8). Real redis-server and service."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from atp_service import AtpService, EmbeddedRedis
from atp_service.intake import bounds
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until

STREAM, GROUP, DLQ = "atp:in:pos", "atp", "atp:dlq"


async def test_a_tag_refused_for_good_leaves_the_reader_reading_new_entries(
        redis_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the tag ran after each pass over the reader's own pending list, and its refusal failed the pass, which
    the reading loop then ran again before any read of new entries: refused for good, no new entry was ever read."""
    refused: list[int] = []

    async def refused_tag(*args: Any) -> None:
        refused.append(1)
        raise ResponseError("NOPERM this user has no permissions to access one of the keys used as arguments")

    monkeypatch.setattr(bounds, "tag", refused_tag)
    r = redis.Redis.from_url(redis_url)
    config = make_config(input_streams=(STREAM,), consumer_group=GROUP, consumer_name="reader-1",
                         owner_check_s=3600.0, claim_idle_ms=3_600_000, port=held_port())
    service = AtpService(config, redis_url)
    try:
        await service.start()
        await until(lambda: len(refused) >= 2, "the tag refused twice")
        entry = r.xadd(STREAM, {"junk": "1"})  # no fact: dead-lettered, then acknowledged
        await until(lambda: entry in {fields[b"_id"] for _, fields in r.xrange(DLQ)},
                    "the new entry read and dead-lettered")
    finally:
        await service.stop(grace_s=0.1)
        r.close()
