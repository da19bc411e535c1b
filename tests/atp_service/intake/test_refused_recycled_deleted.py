"""An entry read with no fields (deleted or trimmed while pending: XDEL, MAXLEN) whose id Redis keeps as refused (E7,
``refused_kept.py``) beside a stream deleted and written anew from low ids by a producer giving its own ids: its fields
are not there to tell it from the entry refused before under that id. Taken for it by its id alone, it was acknowledged
with the old entry's letter standing — a letter saying refused, of another entry's fields, and no word that this entry
was lost while pending. Its dead letter is the one any entry deleted while pending gets: ``TRIMMED_WHILE_PENDING``,
not known to be applied. Real redis-server; a real service refuses the first entry, a reader driven step by step
reads the new stream."""

from __future__ import annotations

from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.dead_letters import Why
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.claim_helpers import T, claiming_ingestor
from tests.atp_service.intake.test_group_lost_pending import STREAM
from tests.atp_service.intake.test_refused_letter_lost import SKEW_MS, _settled
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_an_entry_deleted_while_pending_under_a_refused_entrys_recycled_id_gets_a_letter_of_its_own(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``2-1`` refused (E7) and kept refused; the stream deleted and written anew from low ids, its new
    ``2-1`` (another fact) delivered, then deleted while pending: read with no fields, it was taken for the entry
    refused before — acknowledged, with no dead letter of its own (the letter at its id holding the old entry's
    fields, saying refused)."""
    r: Any = redis.Redis.from_url(redis_url)
    clock = ManualClock()
    now = clock.now_ms()
    service, _ = await start_service(clock=clock)
    r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields(), id="2-1")
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, b"2-1"), "future refused (E7), kept refused")
    await service.stop()
    r.delete(STREAM)  # the group with it; the entries kept refused outlive it
    r.xadd(STREAM, F("fresh", "RECEIPT", "A", "S1", 20, now - 30).fields(), id="2-1")
    ingestor = claiming_ingestor(redis_url, STREAM)
    try:
        await _read_then_deleted_while_pending(ingestor, r)  # made again, marked: up to 2-1 asked for as kept refused
    finally:
        await ingestor._client.aclose()
    codes = [(fields[b"_id"], fields[b"_code"]) for _, fields in r.xrange("atp:dlq")]
    assert codes == [(b"2-1", b"INVALID_FIELD"), (b"2-1", b"TRIMMED_WHILE_PENDING")], \
        f"an entry deleted while pending taken for the one refused before under its id: {codes}"
    assert r.xpending(STREAM, "atp")["pending"] == 0


async def test_an_entry_deleted_while_pending_under_an_id_this_reader_refused_gets_a_letter_of_its_own(
        redis_url: str) -> None:
    """Defect: as above, but the refusal held in the reader's own memory (``Unacked.refused``, the old ``2-1`` refused
    by this very process: it keeps its refusals where the stream is made anew, ``Unacked.made_anew``). Its matching
    took an entry read with no fields for the one refused by id alone, where ``refused_kept.recall`` does not: the new
    ``2-1``, deleted while pending, was acknowledged under the old entry's letter saying refused, no letter of its
    own."""
    r: Any = redis.Redis.from_url(redis_url)
    old = F("future", "RECEIPT", "A", "S1", 2, T + SKEW_MS + 1000).fields()
    ingestor = claiming_ingestor(redis_url, STREAM)
    try:
        r.xadd(STREAM, old, id="2-1")
        await ingestor._create_groups()
        flat = [one for pair in old.items() for one in (str(pair[0]).encode(), str(pair[1]).encode())]
        why = Why("stamped in the future", "event_time", "INVALID_FIELD")
        letter = r.xadd("atp:dlq", {"_id": "2-1", "_code": "INVALID_FIELD"})
        ingestor._unacked.refused([((STREAM, b"2-1", flat, why), letter)])  # this process refused the old 2-1
        r.delete(STREAM)  # deleted and written anew from low ids; its group made again
        r.xadd(STREAM, F("fresh", "RECEIPT", "A", "S1", 20, T - 30).fields(), id="2-1")
        await _read_then_deleted_while_pending(ingestor, r)
    finally:
        await ingestor._client.aclose()
    codes = [(fields[b"_id"], fields[b"_code"]) for _, fields in r.xrange("atp:dlq")]
    assert codes == [(b"2-1", b"INVALID_FIELD"), (b"2-1", b"TRIMMED_WHILE_PENDING")], \
        f"an entry deleted while pending taken for the one this reader refused under its id: {codes}"
    assert r.xpending(STREAM, "atp")["pending"] == 0


async def _read_then_deleted_while_pending(ingestor: Any, r: Any) -> None:
    """The group made again, the new ``2-1`` read, deleted while pending (``XDEL``), read again from the pending list
    with no fields, and handled."""
    await ingestor._create_groups()
    assert [entry[:2] for entry in await ingestor._read(None, block=None)] == [(STREAM, b"2-1")]
    r.xdel(STREAM, "2-1")
    pending = await ingestor._read(["0"], block=None)
    assert pending == [(STREAM, b"2-1", None)], "read from the pending list with no fields"
    await ingestor._handle(pending, wait=False)
