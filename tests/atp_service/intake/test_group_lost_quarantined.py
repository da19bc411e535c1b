"""A consumer group made again delivers again entries that were settled already — all of them, from the start of the
stream, when the reader had read nothing since its start. One whose fact was quarantined for want of room, written
to the quarantine stream with its entry's XACK (E8: decided once), was decided again: applied, where room had come
back (the bound raised and the service restarted, as the runbook says) — while the quarantine stream, what operators
reconcile against, still showed it not applied. Found by ``python -m tests.sim --input-streams`` (seed 3, a group
deleted after a restart with room). Real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_client import AtpClient
from atp_service import AtpService
from reservation import Limits
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.test_group_lost_pending import _group_made_again
from tests.atp_service.intake.test_quarantine_acknowledged import STREAM, T, _on_hand
from tests.conftest import test_config as make_config
from tests.waiting import until


async def e2_quarantined_for_want_of_room(r: Any, redis_url: str) -> None:
    """A service at its bound (one remembered fact a shard) applies ``e1`` (4) and quarantines ``e2`` (on the
    quarantine stream, its entry acknowledged), then stops."""
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=1)), redis_url)
    try:
        await service.start()
        r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields())  # remembered: the shard is at its bound
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # past the bound: quarantined
        await wait_consumed(redis_url, [STREAM])
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def test_a_fact_quarantined_for_want_of_room_is_not_applied_when_its_group_made_again_delivers_it_again(
        redis_url: str) -> None:
    """Defect: ``e2`` was quarantined (the shard at its bound), written to the quarantine stream and acknowledged;
    restarted with room, the service had read nothing when the group was deleted, made it again from the start,
    and applied ``e2`` (on_hand 10) — the quarantine stream holding it as not applied. Its decision now stands: the
    entry, delivered again, is acknowledged as quarantined already; a resend of it from the stream is applied."""
    r: Any = redis.Redis.from_url(redis_url)
    await e2_quarantined_for_want_of_room(r, redis_url)
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        r.xgroup_destroy(STREAM, "atp")  # an operator's, or a Redis restored without it
        r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 1, T + 2).fields())
        await until(lambda: _group_made_again(r), "the group made again")
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 5, "e2, quarantined and on the quarantine stream, applied when read again"
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # the operator's resend, with room now
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 10
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def test_a_quarantined_fact_whose_entry_id_its_producer_stamped_ahead_is_not_applied_when_delivered_again(
        redis_url: str) -> None:
    """Defect: the producer writes its entries with ids of its own (``XADD <ms>-<seq>``, its clock an hour ahead of
    Redis's). ``e2`` was quarantined for want of room and written to the quarantine stream, its entry acknowledged;
    restarted with room, the group deleted and made again from the start, the service applied ``e2`` (on_hand 9):
    the quarantine stream's set scored ``e2`` at Redis's time, before its entry's id, so it was taken for a later
    entry (an operator's resend) and decided again. Its quarantine stands (E8): scored no earlier than its entry."""
    r: Any = redis.Redis.from_url(redis_url)
    seconds, micros = r.time()
    await _quarantined_then_delivered_again(r, redis_url, seconds * 1000 + micros // 1000 + 3_600_000)


async def test_a_quarantined_fact_whose_entry_id_a_score_rounds_is_not_applied_when_delivered_again(
        redis_url: str) -> None:
    """Defect: the producer's ids have a time part past 2^53 ms (ids of its own, far ahead): Redis keeps a set's
    scores as doubles, so ``e2``'s, its entry's id's time, was rounded down below it; read again by the group made
    again, ``e2`` was taken for a later entry than its quarantine write (an operator's resend), decided again and
    applied with room come back (on_hand 10) while the quarantine stream held it as not applied (E8)."""
    await _quarantined_then_delivered_again(redis.Redis.from_url(redis_url), redis_url, 2 ** 53 + 1)


async def test_an_operator_s_resend_on_a_stream_of_ids_ahead_is_applied_when_delivered_again_with_the_fact(
        redis_url: str) -> None:
    """Defect: ``e2``'s fact, quarantined from an entry its producer stamped an hour ahead, was resent by an operator
    (``XADD *``: an id in the same ms as the stream's last, ahead too) while the service was stopped and its group
    lost; the group made again from the start delivered both, and the resend was acknowledged unapplied (on_hand 4):
    scored at ``e2``'s entry's id's time, the fact's write was taken for one made after the resend. The resend, a
    later entry than the one named with the fact, is decided (applied: on_hand 9); ``e2``'s quarantine stands."""
    r: Any = redis.Redis.from_url(redis_url)
    seconds, micros = r.time()
    await _e2_quarantined_at(r, redis_url, seconds * 1000 + micros // 1000 + 3_600_000)
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # the operator's resend
    r.xgroup_destroy(STREAM, "atp")  # an operator's, or a Redis restored without it
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 9, "the resend acknowledged as the quarantined entry delivered again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def _e2_quarantined_at(r: Any, redis_url: str, ahead: int) -> None:
    """``e1`` applied and ``e2`` quarantined for want of room, their entries' ids at ``ahead`` ms; then stopped."""
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=1)), redis_url)
    try:
        await service.start()
        r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields(), id=f"{ahead}-1")
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields(), id=f"{ahead}-2")  # past the bound
        await wait_consumed(redis_url, [STREAM])
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def _quarantined_then_delivered_again(r: Any, redis_url: str, ahead: int) -> None:
    """``e2`` quarantined at ``ahead`` (``_e2_quarantined_at``); restarted with room, the group deleted and made again
    from the start: ``e2`` delivered again is not applied (on_hand 5)."""
    await _e2_quarantined_at(r, redis_url, ahead)
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        r.xgroup_destroy(STREAM, "atp")  # an operator's, or a Redis restored without it
        r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 1, T + 2).fields(), id=f"{ahead}-3")
        await until(lambda: _group_made_again(r), "the group made again")
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 5, "e2, quarantined and on the quarantine stream, applied when read again"
    finally:
        await service.stop()


async def test_facts_whose_entry_ids_run_far_ahead_do_not_crowd_the_quarantine_set_out_of_later_facts(
        redis_url: str) -> None:
    """Defect: a producer stamping its entries with ids far ahead (its clock in 2100, or ids in µs): their facts,
    quarantined for want of room, were scored at their entries' ids in the quarantine stream's set, above every fact
    quarantined since; the set, trimmed to the stream's length lowest score first, kept them for good and dropped each
    later fact at its own write while the stream still held it. A caller's retry of a RecordEvents whose fact was
    quarantined then wrote it to the quarantine stream a second time (E8: written once), one entry a fact being what
    operators reconcile."""
    r: Any = redis.Redis.from_url(redis_url)
    far = 4_102_444_800_000  # 2100-01-01
    cfg = make_config(shards=1, side_stream_maxlen=2, limits=Limits(max_dedupe_entries_per_shard=1))
    service = AtpService(cfg, redis_url)
    try:
        await service.start()
        r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields(), id=f"{far}-1")  # remembered: at the bound
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields(), id=f"{far}-2")  # past it: quarantined
        r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 6, T + 2).fields(), id=f"{far}-3")
        await wait_consumed(redis_url, [STREAM])
        client = AtpClient(f"127.0.0.1:{service.port}")
        try:
            g1 = F("g1", "RECEIPT", "A", "S1", 7, T + 3).pb()
            await client.record_events([g1])  # quarantined: past the bound
            await client.record_events([g1])  # the caller's retry: decided again, quarantined again
        finally:
            await client.close()
        quarantined = [f[b"event_id"] for _, f in r.xrange("atp:quarantine")]
        assert quarantined.count(b"g1") == 1, quarantined
    finally:
        await service.stop()


@pytest.mark.parametrize("ahead_ms", [0, 3_600_000], ids=["redis-ids", "ids-ahead"])
async def test_a_producer_s_retry_added_before_the_quarantine_write_is_not_applied_when_delivered_again(
        redis_url: str, ahead_ms: int) -> None:
    """Defect: ``e2`` was on the stream twice (its producer's retry of an append in doubt), both entries added before
    the service read them; ``e2`` was quarantined for want of room from the first, the second decided alike (the
    stream holding it: not written again). Restarted with room, the group made again from the start: with ids of
    Redis's own both were acknowledged as quarantined (both added before the write), but with ids its producer
    stamped ahead only the entry named with the fact (``quarantine.ahead_key``) was, the retry after it decided again
    and applied (on_hand 10) while the quarantine stream held ``e2`` as not applied (E8: decided once). Named now:
    the stream's newest entry when the fact was written, so every entry added before the write is told from a
    resend made after it."""
    r: Any = redis.Redis.from_url(redis_url)
    seconds, micros = r.time()
    ahead = seconds * 1000 + micros // 1000 + ahead_ms
    ids = [f"{ahead}-{n}" if ahead_ms else "*" for n in (1, 2, 3, 4)]
    r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields(), id=ids[0])  # remembered: the shard at its bound
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields(), id=ids[1])  # past the bound: quarantined
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields(), id=ids[2])  # the producer's retry
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=1)), redis_url)
    try:
        await service.start()
        await wait_consumed(redis_url, [STREAM])
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        r.xgroup_destroy(STREAM, "atp")  # an operator's, or a Redis restored without it
        r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 1, T + 2).fields(), id=ids[3])
        await until(lambda: _group_made_again(r), "the group made again")
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 5, "e2's retry, added before its quarantine write, applied when read again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def test_an_operator_s_resend_on_a_stream_written_again_to_be_rid_of_ids_ahead_is_applied(redis_url: str) -> None:
    """Defect: ``e2`` was quarantined for want of room from an entry its producer stamped an hour ahead (named beside
    the quarantine stream's set). Stopped, the stream deleted to be rid of its ids ahead and written again with
    Redis's (OPERATIONS.md, ``ingest_stream_made_anew``), the operator resending ``e2`` there, the service started
    with room: the group made on the new stream took the resend, an entry before the one named on a stream of that
    name, for the quarantined entry delivered again and acknowledged it unapplied (on_hand 5): the fact lost. An
    entry named past the stream's newest when its group was made is of a stream deleted since: it names none there."""
    r: Any = redis.Redis.from_url(redis_url)
    seconds, micros = r.time()
    await _e2_quarantined_at(r, redis_url, seconds * 1000 + micros // 1000 + 3_600_000)
    r.delete(STREAM)  # to be rid of the ids ahead
    r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 1, T + 2).fields())
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # the operator's resend, with room now
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 10, "the resend acknowledged as the quarantined entry delivered again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()
