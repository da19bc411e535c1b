"""An entry refused as stamped in the future (E7) and delivered again is acknowledged with no second dead letter only
where the dead-letter stream holds *its* letter. Redis back from older data lost the letter; a dead-letter stream on
a node whose clock was behind the lost one's (a failover) can since hold another entry's letter at the very same id:
found by its id alone, it was taken for the entry's, and the entry was acknowledged with no dead letter of its own
anywhere (E6 "never silently dropped"). Real Redis; the loss and the other letter made by putting back every key as
it was (``DUMP``/``RESTORE``), the dead-letter stream holding another letter at the lost one's id."""

from __future__ import annotations

from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_duplicate_after_tail_lost import _back_to, _image
from tests.atp_service.intake.test_group_lost_pending import STREAM, _on_hand_is
from tests.atp_service.intake.test_refused_letter_lost import SKEW_MS, _settled, first_applied
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_an_entry_refused_whose_letter_id_holds_another_letter_is_dead_lettered_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``future`` refused (E7), its letter at id X; Redis back from before that, the dead-letter stream
    holding another entry's letter at X. Read again, ``future`` was acknowledged, no letter naming it anywhere."""
    now, r, client, first = await first_applied(start_service, redis_url)
    image = _image(r)  # Redis comes back from here, but for the dead-letter stream
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, future), "future refused (E7), dead-lettered")
    ((letter_id, _),) = r.xrange("atp:dlq")
    r.xadd("other-letter", {"_reason": "r", "_field": "", "_code": "INVALID_FIELD", "_stream": "elsewhere",
                            "_id": "1-1"}, id=letter_id)
    image[b"atp:dlq"] = r.dump("other-letter")  # another entry's letter at the lost one's id
    r.delete("other-letter")
    _back_to(r, image, first)
    await until(lambda: _settled(r, future), "future read again, settled")
    assert future in [fields[b"_id"] for _, fields in r.xrange("atp:dlq")], \
        "an entry refused acknowledged with another entry's letter taken for its own"
    assert await _on_hand_is(client, 1)
    r.close()
