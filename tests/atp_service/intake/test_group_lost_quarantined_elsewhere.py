"""A consumer group made again by one reader delivers entries settled long ago to any consumer of the group — another
process's reader (``ATP_OWNERSHIP=leases``: every process a consumer of its own), which saw no ``NOGROUP``, or one
started since. One whose fact was quarantined for want of room, written to the quarantine stream with its entry's
XACK (E8: decided once), was decided again there — applied, where room had come back —, only the reader that made the
group knowing it was made again. Found by ``python -m tests.sim --input-streams`` (it counted these). Real
redis-server; the readers' calls made one by one, as their loops make them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from atp_service import AtpService, ManualClock
from atp_service.config import ServiceConfig
from atp_service.engine.clock import Clock
from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.unread import made_again_key
from atp_service.storage.clients import connect_any
from reservation import Limits
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.test_group_lost_quarantined import e2_quarantined_for_want_of_room
from tests.atp_service.intake.test_quarantine_acknowledged import STREAM, T, _on_hand
from tests.conftest import test_config as make_config

MARK = made_again_key(STREAM, "atp")


@pytest.fixture
async def with_room(redis_url: str) -> AsyncIterator[AtpService]:
    """``e2`` quarantined for want of room (on the quarantine stream, its entry acknowledged), ``e1`` (4) applied;
    then the service restarted with room, reading no stream itself: the readers are the test's."""
    r: Any = redis.Redis.from_url(redis_url)
    await e2_quarantined_for_want_of_room(r, redis_url)
    service = AtpService(make_config(shards=1, input_streams=(), limits=Limits(max_dedupe_entries_per_shard=10)),
                         redis_url)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()


def _reader(service: AtpService, redis_url: str, consumer: str, clock: Clock | None = None) -> StreamIngestor:
    """A reader of ``STREAM`` as ``consumer``; ``clock``: its process's (the service's where None)."""
    settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, consumer_name=consumer)
    return StreamIngestor(connect_any(redis_url, 2.0), service.desk, settings, clock or service.clock)


async def test_a_quarantined_fact_is_not_applied_by_another_reader_its_group_made_again_delivers_it_to(
        with_room: AtpService, redis_url: str) -> None:
    """Defect: the group deleted, ``atp-1`` (which found it gone) made it again from the start of the stream; ``atp-2``,
    reading all along, took ``e1`` and ``e2`` and applied ``e2`` (on_hand 9), the quarantine stream holding it as not
    applied. Now the mark the group was made with tells it: ``e2`` acknowledged as it is; the mark forgotten once the
    group is past it with nothing pending up to it."""
    r: Any = redis.Redis.from_url(redis_url)
    maker, other = _reader(with_room, redis_url, "atp-1"), _reader(with_room, redis_url, "atp-2")
    await other._create_groups()  # reading before the group is lost: there already
    r.xgroup_destroy(STREAM, "atp")  # an operator's, or a Redis restored without it
    await maker._create_groups(again=True)  # as its loop does on NOGROUP: it had read nothing, from the start
    entries = await other._read(None, block=None)
    assert [entry_id for _, entry_id, _ in entries] == [entry_id for entry_id, _ in r.xrange(STREAM)]
    await other._handle(entries)
    assert r.xpending(STREAM, "atp")["pending"] == 0
    assert await _on_hand(with_room) == 4, "e2, quarantined and on the quarantine stream, applied by the other reader"
    r.xadd(STREAM, F("e3", "RECEIPT", "A", "S1", 1, T + 2).fields())
    await other._handle(await other._read(None, block=None))
    assert await _on_hand(with_room) == 5
    assert not r.exists(MARK), "kept past the entries it covers"
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # the operator's resend, with room now
    await maker._handle(await maker._read(None, block=None))
    assert await _on_hand(with_room) == 10
    assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    for reader in (maker, other):
        await reader._client.aclose()


async def test_a_quarantined_fact_is_not_applied_by_a_reader_started_since_its_group_was_made_again(
        with_room: AtpService, redis_url: str) -> None:
    """Defect: ``atp-2`` took ``e1`` and ``e2`` from the group made again by ``atp-1`` and stopped before it applied
    them; started again (its process restarted), it read them from its own pending list and applied ``e2`` (on_hand
    9). The mark lasts in Redis while they are pending, and a start's make of the group (there already) tells it."""
    r: Any = redis.Redis.from_url(redis_url)
    maker, other = _reader(with_room, redis_url, "atp-1"), _reader(with_room, redis_url, "atp-2")
    r.xgroup_destroy(STREAM, "atp")
    await maker._create_groups(again=True)
    assert len(await other._read(None, block=None)) == 2  # then stopped: pending to atp-2
    await other._client.aclose()
    started = _reader(with_room, redis_url, "atp-2")
    await started._create_groups()
    await started._retry_pending()  # its own pending entries first, as its loop does
    assert r.xpending(STREAM, "atp")["pending"] == 0
    assert await _on_hand(with_room) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
    for reader in (maker, started):
        await reader._client.aclose()
    await wait_consumed(redis_url, [STREAM])


async def test_a_quarantined_fact_stamped_ahead_of_the_readers_clock_is_not_judged_again_when_delivered_again(
        with_room: AtpService, redis_url: str) -> None:
    """Defect: ``atp-2``, whose clock is behind the one that quarantined ``e2`` by more than the allowed skew (another
    process's, ``ATP_OWNERSHIP=leases``), took ``e1`` and ``e2`` from the group ``atp-1`` made again: ``e2``, stamped
    past the skew by its clock, skipped the quarantine stream's check the other entries get and was judged again,
    dead-lettered as in the future (E7) while the quarantine stream held it as quarantined — and, its group another
    process's, sent there and applied, room having come back. Its quarantine stands (E8: decided once)."""
    r: Any = redis.Redis.from_url(redis_url)
    maker = _reader(with_room, redis_url, "atp-1")
    behind = _reader(with_room, redis_url, "atp-2", ManualClock(T - 10 * 60_000))  # e1 and e2 past its skew (5 min)
    r.xgroup_destroy(STREAM, "atp")
    await maker._create_groups(again=True)  # it had read nothing: from the start, marked
    await behind._handle(await behind._read(None, block=None))
    assert r.xpending(STREAM, "atp")["pending"] == 0
    assert [f[b"event_id"] for _, f in r.xrange("atp:dlq")] == [], "e2, quarantined, dead-lettered as in the future"
    assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    assert await _on_hand(with_room) == 4
    for reader in (maker, behind):
        await reader._client.aclose()


async def test_a_quarantined_fact_is_not_applied_from_the_pending_list_of_a_reader_whose_read_answer_was_lost(
        with_room: AtpService, redis_url: str) -> None:
    """Defect: ``atp-2``, reading all along (no mark when its group was made at its start), read ``e1`` and ``e2``
    from the group ``atp-1`` made again, and lost the read's answer (a timeout: the mark came with it). It read them
    again from its own pending list, as its loop does after a failed read — a read that answered no mark — and
    applied ``e2`` (on_hand 9), the quarantine stream holding it as not applied. The pending read asks the mark too."""
    r: Any = redis.Redis.from_url(redis_url)
    maker, other = _reader(with_room, redis_url, "atp-1"), _reader(with_room, redis_url, "atp-2")
    await other._create_groups()  # reading before the group is lost: there already, unmarked
    r.xgroup_destroy(STREAM, "atp")
    await maker._create_groups(again=True)
    assert len(r.xreadgroup("atp", "atp-2", {STREAM: ">"})[0][1]) == 2  # atp-2's read, its answer lost: pending to it
    await other._retry_pending()  # its own pending entries, as its loop reads them after a failed read
    assert r.xpending(STREAM, "atp")["pending"] == 0
    assert await _on_hand(with_room) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
    for reader in (maker, other):
        await reader._client.aclose()
