"""A consumer group made again delivers again an entry whose fact was quarantined for want of room; the reader holds
the group's made-again mark (``again.py``) from the read that delivered it, or not (that read's answer lost), but its
check of the quarantine stream did not run, so the entry stays pending. A pass over the reader's own pending list
reads it, and Redis comes back from data saved before then, with no mark or an older one. The pass's read answers
the marks with the entries, in one script (``again.read_pending``): were they asked in a call of their own, Redis
could come back between the two — the reader let its mark go, or took the older one, judged the entry as not
delivered again and applied the fact with room come back, while the quarantine stream held it (E8: a fact is decided
once). Found by ``python -m tests.sim --input-streams --lose-tail --seed 549``. Real redis-server; the service's
reading loop stopped and its reader driven by hand, Redis brought back from the save (``DUMP``/``RESTORE``) once the
pending read answered."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.exceptions

from atp_service import AtpService
from atp_service.intake.unread import made_again_key
from atp_service.tasks import cancel_and_wait
from reservation import Limits
from tests.atp_service.intake.test_group_lost_older_data import _back_from, _saved
from tests.atp_service.intake.test_group_lost_quarantined import e2_quarantined_for_want_of_room
from tests.atp_service.intake.test_quarantine_acknowledged import STREAM, _on_hand
from tests.conftest import test_config as make_config


@contextlib.asynccontextmanager
async def _group_made_again(r: Any, redis_url: str) -> AsyncIterator[tuple[AtpService, Any, Any]]:
    """``e2`` quarantined for want of room; a service started with room, its reader driven by hand; Redis saved (``e1``
    and ``e2`` acknowledged in the group, no made-again mark: the image), then the group deleted (an operator's, or a
    Redis restored without it) and made again by the reader: (the service, its reader, the image)."""
    await e2_quarantined_for_want_of_room(r, redis_url)
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10)), redis_url)
    try:
        await service.start()
        reader = service.ingestor
        assert reader is not None
        await cancel_and_wait(reader.task)  # the reader driven by hand from here
        image = _saved(r)
        r.xgroup_destroy(STREAM, "atp")
        await reader._create_groups(again=True)
        yield service, reader, image
    finally:
        await service.stop()


async def test_a_quarantined_fact_read_again_from_the_pending_list_is_not_applied_when_redis_loses_the_marks(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: ``e2`` quarantined and acknowledged; restarted with room, the group deleted and made again from the
    start (marked: the quarantine stream holds a fact), ``e1`` and ``e2`` read and left pending. The pending pass's
    XREADGROUP answered both; Redis then came back from a save made before the group was made again, and the marks'
    read answered none: the reader let its mark go and applied ``e2`` (on_hand 9). The reply just taken holds entries
    at or before the mark, so it is kept: ``e2``'s quarantine stands (on_hand 4, the quarantine stream holding it)."""
    r: Any = redis.Redis.from_url(redis_url)
    async with _group_made_again(r, redis_url) as (service, reader, image):
        delivered = await reader._read(None, block=None)  # the check of the quarantine stream then refused: pending
        assert [fields for _, _, fields in delivered] and STREAM in reader._unacked.again
        pending = await _read_pending_restored_after_the_reply(reader, r, image, monkeypatch)
        assert [entry_id for _, entry_id, _ in pending] == [entry_id for _, entry_id, _ in delivered]
        await reader._handle(pending)
        assert await _on_hand(service) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]


async def test_a_quarantined_fact_read_again_is_not_applied_when_its_read_s_answer_was_lost_and_redis_loses_the_mark(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: as above, but the read of new entries that delivered ``e1`` and ``e2`` again had its answer lost (a
    timeout after Redis ran it): the reader never held the mark, the entries pending. Redis then came back from the
    save between the pending read's reply and the marks' read: no mark there, none kept here, ``e2`` applied
    (on_hand 9). The marks asked before the pending read too: ``e2``'s quarantine stands."""
    r: Any = redis.Redis.from_url(redis_url)
    async with _group_made_again(r, redis_url) as (service, reader, image):
        reader._unacked.again.clear()  # made by another process (ATP_OWNERSHIP=leases): no mark held here
        read = reader._new.read

        async def answer_lost(count: int, block_ms: int | None) -> Any:
            await read(count, block_ms)
            raise redis.exceptions.TimeoutError("answer lost")

        monkeypatch.setattr(reader._new, "read", answer_lost)
        with pytest.raises(redis.exceptions.TimeoutError):
            await reader._read(None, block=None)
        monkeypatch.setattr(reader._new, "read", read)
        assert STREAM not in reader._unacked.again and len(r.xpending(STREAM, "atp")["consumers"]) == 1
        pending = await _read_pending_restored_after_the_reply(reader, r, image, monkeypatch)
        assert len(pending) == 2
        await reader._handle(pending)
        assert await _on_hand(service) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]


async def test_a_quarantined_fact_read_again_is_not_applied_when_redis_comes_back_with_an_older_mark(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: as the first, but Redis came back from a save made while the group had been made again when ``e1`` was
    its stream's newest entry (its mark ``e1``). The marks asked after the pending read, in a call of their own,
    answered ``e1``: the reader took it for its ``e2``, judged ``e2`` as delivered before the group was made again
    and applied it (on_hand 9). Answered with the entries, in one script, the mark is ``e2``: its quarantine stands."""
    r: Any = redis.Redis.from_url(redis_url)
    async with _group_made_again(r, redis_url) as (service, reader, _):
        mark, (first, last) = made_again_key(STREAM, "atp"), [entry_id for entry_id, _ in r.xrange(STREAM)]
        assert r.get(mark) == last
        r.set(mark, first)
        older = _saved(r)  # the group as made again when e1 was the stream's newest: its mark e1
        r.set(mark, last)
        delivered = await reader._read(None, block=None)  # the check of the quarantine stream then refused: pending
        assert reader._unacked.again[STREAM] == last
        pending = await _read_pending_restored_after_the_reply(reader, r, older, monkeypatch)
        assert [entry_id for _, entry_id, _ in pending] == [entry_id for _, entry_id, _ in delivered]
        await reader._handle(pending)
        assert await _on_hand(service) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]


async def test_a_quarantined_fact_read_again_from_the_pending_list_is_not_applied_when_redis_drops_the_mark(
        redis_url: str) -> None:
    """As the first, but the mark gone before the pending read (an operator's ``DEL``, a restore of some keys) while
    the group keeps ``e1`` and ``e2`` pending: the pending read answers no mark with entries at or before the one the
    reader holds, which it keeps (``Unacked.marked``): ``e2``'s quarantine stands (let go, ``e2`` applied: on_hand
    9)."""
    r: Any = redis.Redis.from_url(redis_url)
    async with _group_made_again(r, redis_url) as (service, reader, _):
        delivered = await reader._read(None, block=None)  # the check of the quarantine stream then refused: pending
        assert STREAM in reader._unacked.again
        r.delete(made_again_key(STREAM, "atp"))
        pending = await reader._read(["0"] * len(reader._streams), block=None)
        assert [entry_id for _, entry_id, _ in pending] == [entry_id for _, entry_id, _ in delivered]
        await reader._handle(pending)
        assert await _on_hand(service) == 4, "e2, quarantined and on the quarantine stream, applied when read again"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]


async def _read_pending_restored_after_the_reply(reader: Any, r: Any, image: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A pass's read of the reader's own pending list, Redis back from ``image`` once the call that read them answered
    (its script, ``again.read_pending``; or a plain XREADGROUP)."""
    execute = reader._client.execute_command

    async def restored_after(*args: Any, **kwargs: Any) -> Any:
        got = await execute(*args, **kwargs)
        if args[0] in ("EVALSHA", "XREADGROUP"):
            monkeypatch.setattr(reader._client, "execute_command", execute)
            _back_from(r, image)
        return got

    monkeypatch.setattr(reader._client, "execute_command", restored_after)
    try:
        return await reader._read(["0"] * len(reader._streams), block=None)
    finally:
        monkeypatch.setattr(reader._client, "execute_command", execute)
