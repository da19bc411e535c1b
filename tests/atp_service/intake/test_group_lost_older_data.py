"""Redis back from older data, then the consumer group deleted: the group made again must start where what Redis now
holds says, not where the reader's memory of a Redis since gone says.

The reader keeps where a group made again must start (``unacked.Unacked``): after the newest entry it read, before
the oldest it holds unacknowledged. Those bounds rose on what Redis showed — an entry read, its dead letter written
and acknowledged. Redis then came back from data saved before that (a restart from an older RDB or AOF, a failover to
a lagging replica): the entry pending again, its dead letter gone. Its group deleted next (an operator's XGROUP DESTROY,
another loss), the reader made it again after the entry its memory said was settled: never delivered again, never
dead-lettered in what Redis holds (E6, R7). Real Redis, through a proxy that holds the dead-letter script while
every key is saved. Now a bound is used only while Redis holds the token it was told with (``intake/bounds.py``)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service import EmbeddedRedis
from atp_service.intake import bounds, dead_letters
from atp_service.intake.unacked import Unacked, before
from tests.atp_service.intake.claim_helpers import POS, claiming_ingestor, read_acknowledged_and_tagged
from tests.atp_service.intake.test_trimmed_kept_group_lost import reader_behind
from tests.waiting import until

STREAM, GROUP, CONSUMER, DLQ = "atp:in:pos", "atp", "reader-1", "atp:dlq"
WRITE_SHA = hashlib.sha1(dead_letters._WRITE.encode()).hexdigest().encode()  # an entry's dead letter and its XACK


def _saved(r: Any) -> dict[bytes, bytes]:
    """Every key as Redis holds it now (``DUMP``): a save."""
    return {key: r.dump(key) for key in r.scan_iter()}


def _back_from(r: Any, image: dict[bytes, bytes]) -> None:
    """Redis back from ``image``: keys made since gone, every other as it was (those unchanged left alone)."""
    for key in list(r.scan_iter()):
        if key not in image:
            r.delete(key)
    for key, data in image.items():
        if r.dump(key) != data:
            r.restore(key, 0, data, replace=True)


def _letters(r: Any) -> set[bytes]:
    return {fields[b"_id"] for _, fields in r.xrange(DLQ)}


async def test_an_entry_settled_in_data_redis_lost_is_read_again_when_its_group_is_made_again(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    try:
        async with reader_behind(redis_server) as (proxy, _):
            proxy.hold(WRITE_SHA)
            first = r.xadd(STREAM, {"junk": "1"})  # no fact: dead-lettered, then acknowledged (one script)
            await until(lambda: proxy.held, "the entry read, its dead letter on its way: pending with the reader")
            image = _saved(r)  # Redis saves now: the entry pending, no dead letter
            proxy.hold()
            proxy.release(proxy.held[0])
            await until(lambda: first in _letters(r) and r.xpending(STREAM, GROUP)["pending"] == 0,
                        "the entry dead-lettered and acknowledged")
            _back_from(r, image)  # Redis back from that save: the entry pending again, its dead letter gone
            r.xgroup_destroy(STREAM, GROUP)  # and then its group deleted
            second = r.xadd(STREAM, {"junk": "2"})
            await until(lambda: second in _letters(r), "the group made again, the entry after it dead-lettered")
            assert first in _letters(r), "the entry Redis holds, settled only in data it lost, was never read again"
    finally:
        r.close()


def test_a_bound_is_kept_under_its_token_and_lowered_by_every_entry_held_since() -> None:
    """``Unacked``'s side: a bound no higher than what Redis held as it took the token (the group's last delivered
    entry, the oldest pending with the reader), and each kept lowered by an entry held later (claimed, delivered by a
    group made again): Redis back at that token may hold it pending. A tag whose answer was lost keeps nothing."""
    unacked = Unacked()
    unacked.note_seen(STREAM, b"10-0")
    first = unacked.tag_begun()
    unacked.tag_answered(first, {STREAM: (b"10-0", b"4-0")})  # 4-0 pending with the reader, unknown to its memory
    assert unacked.tagged(STREAM) == [(first, before(b"4-0"))]
    lost = unacked.tag_begun()
    unacked.tag_failed(lost)
    unacked.note_seen(STREAM, b"12-0")
    second = unacked.tag_begun()
    unacked.tag_answered(second, {STREAM: (b"12-0", None)})
    assert unacked.tagged(STREAM) == [(first, before(b"4-0")), (second, b"12-0")]
    unacked.release(unacked.hold([(STREAM, b"2-0", None)]))  # claimed since, settled since: Redis may lose that
    assert unacked.tagged(STREAM) == [(first, before(b"2-0")), (second, before(b"2-0"))]
    unacked.starts_at(STREAM, b"0")  # the group made again from the stream's start
    assert unacked.tagged(STREAM) == [(first, b"0"), (second, b"0")]
    assert unacked.tagged("atp:in:wms") == [(first, b"0"), (second, b"0")]  # none read there: from its start


async def test_a_tag_whose_answer_was_lost_leaves_no_bound_and_the_group_made_again_reads_from_the_start(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tag ran (Redis holds its token), its answer lost: the reader keeps no bound under that token, for it was
    never checked against what Redis held. The group deleted then, Redis holding a token the reader does not know,
    it is made again at the stream's start (every entry delivered again: duplicates of no effect, E8), not at a bound
    of the reader's memory alone."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = claiming_ingestor(redis_url, POS)
    try:
        old, read = await read_acknowledged_and_tagged(r, ingestor)  # tagged: a group made again reads after them
        assert read == old
        real = ingestor._client.register_script

        def losing(source: str) -> Any:
            script = real(source)

            async def lost(**kwargs: Any) -> Any:  # run, its answer lost
                await script(**kwargs)
                raise RedisTimeoutError("Timeout reading from socket")

            return lost if source == bounds._TAG else script

        monkeypatch.setattr(ingestor._client, "register_script", losing)
        await ingestor._tag()  # its failure said, not raised (bounds.tag_or_say): the reader reads on
        monkeypatch.undo()
        r.xgroup_destroy(POS, "atp")
        await ingestor._create_groups(again=True)
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert [entry_id for _, entry_id, _ in again] == old, "made again at a bound Redis never answered for"
