"""A consumer group made again delivers again an entry whose fact was quarantined for want of room; the reader holds
the group's made-again mark (``again.py``) from the read that delivered it, but its check of the quarantine stream did
not run, so the entry stays pending. A pass over the reader's own pending list reads it, and asks Redis for the marks
in a call of its own (``again.marks_of``): Redis came back from data saved before the group was made again between
the two — no mark there. The reader forgot its mark (no batch in hand), judged the entry as not delivered again and
applied the fact with room come back, while the quarantine stream held it (E8: a fact is decided once). Found by
``python -m tests.sim --input-streams --lose-tail --seed 549``. Real redis-server; the service's reading loop stopped
and its reader driven by hand, Redis brought back from the save (``DUMP``/``RESTORE``) as the marks are asked for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.exceptions

from atp_service import AtpService
from atp_service.intake import ingest
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


async def _read_pending_restored_after_the_reply(reader: Any, r: Any, image: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A pass's read of the reader's own pending list, Redis back from ``image`` once its XREADGROUP answered, before
    the marks are asked for after it (``again.marks_of``)."""
    marks_of, execute = ingest.marks_of, reader._client.execute_command
    replied: list[bool] = []

    async def noted(*args: Any, **kwargs: Any) -> Any:
        got = await execute(*args, **kwargs)
        replied.append(args[0] == "XREADGROUP")
        return got

    async def restored_between(*args: Any) -> dict[str, bytes | None]:
        if replied and replied[-1]:
            _back_from(r, image)
        return await marks_of(*args)

    monkeypatch.setattr(ingest, "marks_of", restored_between)
    monkeypatch.setattr(reader._client, "execute_command", noted)
    try:
        return await reader._read(["0"] * len(reader._streams), block=None)
    finally:
        monkeypatch.setattr(ingest, "marks_of", marks_of)
        monkeypatch.setattr(reader._client, "execute_command", execute)
