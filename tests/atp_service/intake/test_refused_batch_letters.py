"""Entries refused as stamped in the future (E7) in one batch are each remembered with *their own* dead letter's id
(``dead_letters.write`` returns them per entry). Read from the script's flat answer [index, id, index, id, …] one
place off, the second entry was remembered with an index for an id and the third with the second's letter id:
delivered again (a group made again before them), the second was dead-lettered a second time while its letter
stood, the third taken as dead-lettered by another entry's letter. Real Redis; the three entries added in one
transaction (one read delivers them), the group set back before them with the dead-letter stream as it is."""

from __future__ import annotations

from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM, _on_hand_is
from tests.atp_service.intake.test_refused_letter_lost import SKEW_MS, _settled, first_applied
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_entries_refused_in_one_batch_are_each_remembered_with_their_own_letter(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: three entries refused (E7) in one read, then delivered again with their three letters standing: a
    fourth letter was written (the second entry's letter id remembered as ``3``)."""
    now, r, client, first = await first_applied(start_service, redis_url)
    with r.pipeline(transaction=True) as pipe:  # one read delivers the three: one script writes their letters
        for n in range(3):
            pipe.xadd(STREAM, F(f"future{n}", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000 + n).fields())
        futures = pipe.execute()
    await until(lambda: r.xlen("atp:dlq") == 3 and _settled(r, futures[-1]), "the three refused (E7)")
    r.xgroup_setid(STREAM, "atp", first)  # delivered again, their letters standing
    await until(lambda: _settled(r, futures[-1]), "the three read again, settled")
    letters = [fields[b"_id"] for _, fields in r.xrange("atp:dlq")]
    assert letters == futures, "an entry refused dead-lettered again while its letter stood"
    assert await _on_hand_is(client, 1)
    r.close()
