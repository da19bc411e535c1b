"""benchmarks/scale_check.py, the check after a scale step, against a real service: a hold acknowledged and lost
fails it even where a call in doubt landed at the same position (R1, R7)."""

from __future__ import annotations

from collections import Counter

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from benchmarks.scale_check import check
from tests.atp_service.edge.test_routing import advertised
from tests.conftest import ServiceFactory

P, Q = ("sku-00000", "loc-00"), ("sku-00001", "loc-00")


async def test_a_lost_hold_is_not_hidden_by_a_call_in_doubt_that_landed_at_its_position(
        start_service: ServiceFactory) -> None:
    """At P one unit is held, by ``landed``, a call the generator had in doubt; the generator was also told
    ``lost`` held at P, which the service does not hold (a hold lost). Counted per position alone, the one unit
    held matched the one acknowledged: the check passed. At Q a call in doubt that did not land, and nothing
    acknowledged: no loss there."""
    service, client = await start_service()
    address = advertised(service)
    at = timestamp(service.clock.now_ms() - 1000)
    facts = [pb.Fact(event_id=f"seed-{sku}", source="bench", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                     quantity=10, event_time=at) for sku, loc in (P, Q)]
    assert all(r.outcome == pb.FACT_OUTCOME_APPLIED for r in await client.record_events(facts))
    assert (await client.reserve("landed", [(*P, 1)], ttl_seconds=3600)).state == pb.RESERVATION_STATE_HELD
    in_doubt = {"landed": P, "never-made": Q}
    lost = await check((address,), [P, Q], Counter({P: 1}), in_doubt)
    assert (lost["holds_lost"], lost["hold_mismatches"], lost["oversold"]) == (1, 1, 0), lost
    # The same position once the acknowledged hold is there too: nothing lost, the call in doubt counted landed.
    assert (await client.reserve("acked", [(*P, 1)], ttl_seconds=3600)).state == pb.RESERVATION_STATE_HELD
    whole = await check((address,), [P, Q], Counter({P: 1}), in_doubt)
    assert whole == {"checked_positions": 2, "oversold": 0, "hold_mismatches": 0, "holds_lost": 0,
                     "in_doubt_held": 1}, whole
