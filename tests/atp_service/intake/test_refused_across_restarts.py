"""An entry refused as stamped in the future (E7) stays refused whichever process reads it again, and whenever: the
memory that it was judged is kept in Redis beside its stream (``refused_kept.py``), not in the process that judged it.
A group made again from the stream's start delivers it again; judged anew by a clock that has moved on (a process
started since, another process's), one then within the skew was applied, its dead letter saying refused (E7; E8: the
outcome never depends on which process reads an entry). Real redis-server, real services; each clock set by hand."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_service import ManualClock
from atp_service.intake.dead_letters import Why
from atp_service.intake.refused_kept import unpacked
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM, _group_made_again, _on_hand_is
from tests.atp_service.intake.test_refused_letter_lost import SKEW_MS, _settled
from tests.conftest import ServiceFactory
from tests.waiting import until


async def _refused_then_group_lost(start_service: ServiceFactory, r: Any) -> tuple[int, bytes]:
    """A service applied ``first`` and refused ``future`` (E7), then stopped, and the group deleted: ``(now, future's
    id)``."""
    clock = ManualClock()
    now = clock.now_ms()
    service, _ = await start_service(clock=clock)
    r.xadd(STREAM, F("first", "RECEIPT", "A", "S1", 1, now - 50).fields())
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, future), "first applied, future refused (E7)")
    await service.stop()
    r.xgroup_destroy(STREAM, "atp")
    return now, future


@pytest.mark.parametrize("consumer", [{}, {"consumer_name": "another"}], ids=["restarted", "another-process"])
async def test_an_entry_refused_in_the_future_stays_refused_when_read_again_after_a_restart(
        start_service: ServiceFactory, redis_url: str, consumer: dict[str, str]) -> None:
    """Defect: ``future`` refused (E7) and dead-lettered by a service; that service stopped, the group deleted, and a
    service started with a clock where ``future`` is within the skew: the group made again from the stream's start
    delivered ``future`` again, and it was applied (on_hand 3) — its dead letter saying refused."""
    r: Any = redis.Redis.from_url(redis_url)
    now, future = await _refused_then_group_lost(start_service, r)
    _, client = await start_service(clock=ManualClock(now + 2000), **consumer)  # ``future`` within the skew by it
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _settled(r, future), "first and future read again, settled")
    assert await _on_hand_is(client, 1), "an entry refused as stamped in the future (E7) was applied after all"
    assert [fields[b"_id"] for _, fields in r.xrange("atp:dlq")] == [future], "dead-lettered once, not again"
    r.close()


async def test_an_entry_refused_whose_letter_was_trimmed_is_dead_lettered_again_as_it_was(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Read again by a process that never refused it, with its dead letter gone from the dead-letter stream (trimmed):
    written again with the reason, field and code it had, from what Redis keeps beside the stream — not judged again,
    not acknowledged with no letter anywhere."""
    r: Any = redis.Redis.from_url(redis_url)
    now, future = await _refused_then_group_lost(start_service, r)
    ((_, letter),) = r.xrange("atp:dlq")
    r.delete("atp:dlq")
    _, client = await start_service(clock=ManualClock(now + 2000))
    await until(lambda: _settled(r, future) and r.xlen("atp:dlq") == 1, "future read again, dead-lettered again")
    assert await _on_hand_is(client, 1)
    ((_, again),) = r.xrange("atp:dlq")
    assert {k: again[k] for k in (b"_id", b"_reason", b"_field", b"_code")} == {
        k: letter[k] for k in (b"_id", b"_reason", b"_field", b"_code")}
    r.close()


async def test_a_new_entry_given_the_id_of_one_refused_on_a_deleted_stream_is_applied(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: a producer giving its own ids deleted the stream and wrote it anew from low ids; the set of entries
    refused (E7) outlived the stream it named, and a brand-new entry given a refused one's id was taken for it —
    acknowledged with the old entry's letter standing, no letter of its own: a fact lost (on_hand 11, not 31)."""
    r: Any = redis.Redis.from_url(redis_url)
    clock = ManualClock()
    now = clock.now_ms()
    service, _ = await start_service(clock=clock)
    r.xadd(STREAM, F("first", "RECEIPT", "A", "S1", 1, now - 50).fields(), id="1-1")
    r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields(), id="2-1")
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, b"2-1"), "first applied, future refused (E7)")
    await service.stop()
    r.delete(STREAM)  # the group with it
    r.xadd(STREAM, F("again", "RECEIPT", "A", "S1", 10, now - 40).fields(), id="1-1")
    r.xadd(STREAM, F("fresh", "RECEIPT", "A", "S1", 20, now - 30).fields(), id="2-1")
    _, client = await start_service(clock=clock)
    await until(lambda: _settled(r, b"2-1"), "the new stream's entries read, settled")
    assert await _on_hand_is(client, 31), "a new entry with a refused entry's recycled id was taken for it"
    assert r.xlen("atp:dlq") == 1, "no entry of the new stream dead-lettered"
    r.close()


async def test_an_entry_kept_refused_before_the_fields_digest_stays_refused(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: an entry kept refused by a release before the fields' digest (its letters' hash value ``letter\\ncode\\n
    field\\nreason``, no digest) was read as the new format: split into too few parts, recall raised ``ValueError``
    and the intake never settled the group made again (wedged); a reason holding a newline was mis-parsed, its code
    taken for the digest, and the entry judged again — applied, its dead letter saying refused."""
    r: Any = redis.Redis.from_url(redis_url)
    now, future = await _refused_then_group_lost(start_service, r)
    key = f"{STREAM}:refused:atp:letters"
    letter, _digest, rest = r.hget(key, future).split(b"\n", 2)
    r.hset(key, future, letter + b"\n" + rest)  # as kept before the digest
    _, client = await start_service(clock=ManualClock(now + 2000))  # ``future`` within the skew by it
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _settled(r, future), "first and future read again, settled")
    assert await _on_hand_is(client, 1), "an entry kept refused before the digest was applied after all"
    assert [fields[b"_id"] for _, fields in r.xrange("atp:dlq")] == [future], "dead-lettered once, not again"
    r.close()


def test_a_value_kept_before_the_digest_is_parsed_whole_whatever_its_reason_holds() -> None:
    """Defect: a value kept before the fields' digest whose reason held a newline was split one part off: its code
    taken for the digest (no match: the entry judged again), its field for its code, its reason cut."""
    assert unpacked(b"7-0\nINVALID_FIELD\nevent_time_ms\nfirst line\nsecond") == (
        b"7-0", None, Why("first line\nsecond", "event_time_ms", "INVALID_FIELD"))
    digest = "0123456789abcdef" * 2
    assert unpacked(f"7-0\n{digest}\nINVALID_FIELD\nevent_time_ms\na\nb".encode()) == (
        b"7-0", digest, Why("a\nb", "event_time_ms", "INVALID_FIELD"))
