"""An input stream deleted and written again ("made anew") while the service reads it: every fact of the stream as
written again is read, whatever ids its producer gave it, and none of the old stream's is applied twice. Real
redis-server and a real service; the new stream written in one MULTI with its deletion, so the reader finds it whole
whenever it looks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from atp_service import ManualClock
from atp_service.intake.anew import entry_digest
from atp_service.intake.unread import make_group_marked, refused_key, refused_letters_key
from atp_service.tasks import cancel_and_wait
from tests.atp_service.fact_helpers import F, dead_lettered, wait_consumed
from tests.conftest import ServiceFactory
from tests.waiting import until

STREAM = "atp:in:pos"
GROUP = "atp"
WRITTEN = "t:quarantine:written"
TOKEN = b"token-1"
T = 1_700_000_000_000
HOUR_MS = 3_600_000


def _tagged_at(service: Any, entry_id: bytes) -> bool:
    """The reader's newest tag answered (the token Redis holds) keeps ``entry_id`` as where a group made again starts
    (``Unacked.tagged``)."""
    tagged = service.ingestor._unacked.tagged(STREAM)
    return bool(tagged) and tagged[-1][1] == entry_id


def _made_anew(r: Any, entries: list[tuple[str, F]]) -> None:
    """``STREAM`` deleted and written again with ``entries`` (id, fact), in one MULTI."""
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(STREAM)
        for entry_id, fact in entries:
            pipe.xadd(STREAM, fact.fields(), id=entry_id)
        pipe.execute()


async def _on_hand_once_read(client: Any, expected: int) -> int:
    """A@S1's on_hand once it is ``expected``, or after a bound (not a timing: the assertion says what came)."""
    got = -1
    for _ in range(400):
        got = (await client.availability([("A", "S1")]))[0].on_hand
        if got == expected:
            break
        await asyncio.sleep(0.05)
    return int(got)


@pytest.mark.parametrize("at_seen", [None, "other"], ids=["none-at-the-id-read", "another-entry-at-the-id-read"])
async def test_a_stream_written_again_from_low_ids_past_the_newest_read_is_read_from_its_start(
        start_service: ServiceFactory, redis_url: str, at_seen: str | None) -> None:
    """Defect: a producer giving its own ids deleted the stream and wrote it again from low ids, past the newest entry
    the reader had read (1000-0) before the reader found its group gone. The stream's ids reached that entry, so it
    was taken for the same stream and its group made again after the reader's tagged bound: the new stream's entries
    up to it (500-0, and another entry given the id 1000-0) were never delivered — facts lost, nothing pending,
    nothing dead-lettered."""
    now = int(time.time() * 1000)
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(claim_idle_ms=1000)  # a tag each 0.5 s
    r.xadd(STREAM, F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields(), id="1000-0")
    await wait_consumed(redis_url, [STREAM])
    await until(lambda: _tagged_at(service, b"1000-0"), "a tag answered with the newest entry read")
    anew = [("500-0", F("n1", "RECEIPT", "A", "S1", 1, now - 50))]
    if at_seen is not None:
        anew.append(("1000-0", F("n2", "RECEIPT", "A", "S1", 10, now - 40)))
    anew.append(("2000-0", F("n3", "RECEIPT", "A", "S1", 100, now - 30)))
    _made_anew(r, anew)
    expected = 4 + sum(fact.quantity for _, fact in anew)
    assert await _on_hand_once_read(client, expected) == expected, "the new stream's entries not all applied"
    await wait_consumed(redis_url, [STREAM], timeout_s=20)
    assert (await client.availability([("A", "S1")]))[0].on_hand == expected


async def test_a_stream_written_again_with_later_ids_is_read_whole_after_the_tagged_bound(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Sound, pinned: a stream deleted and written again with ``*`` ids (later than every entry read) has its ids
    reach the newest entry read, and holds no entry there: taken for the stream read (none there that neither a trim
    nor an XDEL took is told apart from one trimmed past it), its group is made again after the tagged bound — and
    every entry of the new stream, all past it, is delivered and applied once."""
    now = int(time.time() * 1000)
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(claim_idle_ms=1000)
    first = r.xadd(STREAM, F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await wait_consumed(redis_url, [STREAM])
    await until(lambda: _tagged_at(service, first), "a tag answered with the newest entry read")
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(STREAM)
        pipe.xadd(STREAM, F("n1", "RECEIPT", "A", "S1", 1, now - 50).fields())
        pipe.xadd(STREAM, F("n2", "SALE", "A", "S1", 2, now - 40).fields())
        pipe.execute()
    assert await _on_hand_once_read(client, 3) == 3, "the new stream's entries not all applied, or p1 not once"
    await wait_consumed(redis_url, [STREAM], timeout_s=20)
    assert (await client.availability([("A", "S1")]))[0].on_hand == 3
    assert r.xlen("atp:dlq") == 0


async def _made(client: Any, seen: tuple[bytes, str]) -> tuple[bytes, bool]:
    """The group made again (deleted first) with ``TOKEN`` held, kept with the bound 1000-0, and ``seen``: where it
    starts, and whether the stream was found made anew."""
    await client.set("bound", TOKEN)
    if await client.exists(STREAM):
        await client.xgroup_destroy(STREAM, GROUP)
    made, _, start, anew, _ = await make_group_marked(client, STREAM, GROUP, b"0", WRITTEN, "bound",
                                                   [(TOKEN, b"1000-0")], seen)
    assert made
    return start, anew


async def test_the_stream_read_is_told_from_one_made_anew_by_what_it_holds_at_the_entry_read(redis_url: str) -> None:
    """The script making a group again takes the stream for the one read while it holds the entry read, or lost it to
    a trim or an XDEL, or the entry's fields are not known; else (another entry at its id, none there that a trim or
    an XDEL took, its ids short of it, the stream gone) the stream was made anew: read from its start."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        fields = [b"event_id", b"p1", b"quantity", b"4"]
        seen = (b"1000-0", entry_digest(fields))
        await client.xadd(STREAM, dict(zip(fields[::2], fields[1::2], strict=True)), id="1000-0")
        assert await _made(client, seen) == (b"1000-0", False), "the entry read there"
        assert await _made(client, (b"1000-0", "")) == (b"1000-0", False), "its fields not known: its id reached"
        await client.xadd(STREAM, {"event_id": "p2"}, id="2000-0")
        await client.xdel(STREAM, "1000-0")
        assert await _made(client, seen) == (b"1000-0", False), "the entry read deleted (XDEL)"
        await client.xadd(STREAM, {"event_id": "p3"}, id="3000-0")
        await client.xtrim(STREAM, minid="3000-0")
        assert await _made(client, seen) == (b"1000-0", False), "trimmed past the entry read"
        await client.delete(STREAM)
        await client.xadd(STREAM, {"event_id": "n1"}, id="500-0")
        await client.xadd(STREAM, {"event_id": "n2"}, id="1000-0")
        assert await _made(client, seen) == (b"0", True), "another entry given the id read"
        await client.delete(STREAM)
        await client.xadd(STREAM, {"event_id": "n1"}, id="500-0")
        await client.xadd(STREAM, {"event_id": "n3"}, id="2000-0")
        assert await _made(client, seen) == (b"0", True), "none at the id read, none deleted or trimmed there"
        await client.delete(STREAM)
        await client.xadd(STREAM, {"event_id": "n1"}, id="500-0")
        assert await _made(client, seen) == (b"0", True), "its ids short of the entry read"
        await client.delete(STREAM)
        assert await _made(client, seen) == (b"0", True), "gone"
    finally:
        await client.aclose()


async def test_an_entry_of_a_stream_made_anew_given_the_id_of_one_refused_is_judged_not_taken_for_it(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: the reader kept the entries it refused (E7) by their ids alone. The stream deleted and written again
    from low ids, and its group made again by another process's reader (this one never refused NOGROUP, so never
    told the stream was made anew), a new entry given a refused one's id was taken for it: dead-lettered as refused,
    its dead letter the old entry's (not written again) — a RECEIPT dropped, no dead letter of its own; and one
    dead-lettered for its own reason (a bad quantity) had its letter taken for the old entry's: none written."""
    clock = ManualClock(T)
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock)
    r.xadd(STREAM, F("bad-clock", "RECEIPT", "A", "S1", 5, T + HOUR_MS).fields(), id="1000-0")
    r.xadd(STREAM, F("bad-clock-2", "RECEIPT", "A", "S1", 6, T + HOUR_MS).fields(), id="2000-0")
    await wait_consumed(redis_url, [STREAM])
    await until(lambda: dead_lettered(service, STREAM) == 2, "refused as stamped in the future (E7)")
    reader, desk = service.ingestor, service.desk
    assert reader is not None and desk is not None
    await cancel_and_wait(reader.task)  # driven by hand: the group made again by another reader, as it would
    bad = {**F("n2", "RECEIPT", "A", "S1", 1, T - 40).fields(), "quantity": "many"}
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(STREAM)
        pipe.xadd(STREAM, F("n1", "RECEIPT", "A", "S1", 4, T - 50).fields(), id="1000-0")
        pipe.xadd(STREAM, bad, id="2000-0")
        pipe.execute()
    other = aioredis.Redis.from_url(redis_url)
    try:
        await make_group_marked(other, STREAM, GROUP, b"0", desk.quarantine.written_key)
    finally:
        await other.aclose()
    read = await reader._read(None, block=None)
    assert [entry_id for _, entry_id, _ in read] == [b"1000-0", b"2000-0"]
    await reader._handle(read)
    assert (await client.availability([("A", "S1")]))[0].on_hand == 4, "n1 taken for the entry refused"
    letters = [fields for _, fields in r.xrange("atp:dlq")]
    assert [(one[b"event_id"], one[b"_id"]) for one in letters] == [
        (b"bad-clock", b"1000-0"), (b"bad-clock-2", b"2000-0"), (b"n2", b"2000-0")], "n2's own dead letter"
    assert letters[2][b"_reason"].startswith(b"quantity")


async def test_an_entry_refused_before_redis_lost_its_tail_is_not_judged_again_as_of_a_stream_made_anew(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: a stream whose ids fall short of the newest entry read is taken for one made anew — or Redis came back
    from older data (a restart from an older save, a failover to a lagging replica). The reader forgot the entries it
    had refused (E7) there, by id, as of another stream: one Redis's older data holds unrefused (its dead letter, its
    place in the refused set and its acknowledgement lost with one script) came again and was judged again by a clock
    that had moved on — applied, its dead letter saying it was refused. Its fields tell it (the digest kept with it)."""
    clock = ManualClock(T)
    r: Any = redis.Redis.from_url(redis_url)
    r.xadd(STREAM, F("bad-clock", "RECEIPT", "A", "S1", 5, T + HOUR_MS).fields(), id="1000-0")
    image = r.dump(STREAM)  # saved before the service read it: no group, nothing refused
    service, client = await start_service(clock=clock)
    await until(lambda: dead_lettered(service, STREAM) == 1, "refused as stamped in the future (E7)")
    r.xadd(STREAM, F("p2", "RECEIPT", "B", "S1", 1, T - 50).fields(), id="2000-0")
    await wait_consumed(redis_url, [STREAM])
    with r.pipeline(transaction=True) as pipe:  # Redis back from that save: the stream, and nothing refused beside it
        pipe.delete(refused_key(STREAM, GROUP), refused_letters_key(STREAM, GROUP))
        pipe.restore(STREAM, 0, image, replace=True)
        pipe.execute()
    clock.advance(2 * HOUR_MS)  # bad-clock's stamp within the skew now
    await wait_consumed(redis_url, [STREAM], timeout_s=20)
    assert (await client.availability([("A", "S1")]))[0].on_hand == 0, "the entry refused was applied"
    assert r.xlen("atp:dlq") == 1
