"""``ExplainAvailability``: how a position's numbers came to be, in an answer gRPC can send.

A position keeps every delta after its latest count inside the grace window (``fact_grace_ms``, a
day by default): a busy one keeps tens of thousands, and lists up to ``max_explain_holds``
reservations, each with ids up to ``max_id_length``. An answer past ``max_message_bytes``, which
binds what the service sends too, was failed by gRPC itself (``RESOURCE_EXHAUSTED`` "Sent message
larger than max", no reason, an ERROR traceback in the log), every time: the busiest positions,
the ones most asked about, could never be explained. So the answer keeps what fits: its numbers
whole, the holds first (the last ones left out: ``holds_truncated``), then the newest deltas
(``deltas_truncated``: older ones left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.engine.explain import Explanation
from atp_service.engine.router import Engine
from reservation import Limits

FLAGS_BYTES = 4
"""What ``holds_truncated`` and ``deltas_truncated`` cost when set (a tag and a byte each): kept free."""


async def explain_availability(sku: str, location: str, engine: Engine, limits: Limits,
                               max_message_bytes: int) -> pb.ExplainAvailabilityResponse:
    """The explanation of the position (``sku`` and ``location`` checked, ``check_id``)."""
    ex = Explanation(engine, sku, location, limits.max_explain_holds)
    await ex.with_orders_elsewhere(engine)  # leased: the expiry of an order held at another process
    out = pb.ExplainAvailabilityResponse(
        availability=convert.availability_pb(sku, location, ex.quantities), holds_truncated=ex.holds_truncated,
        stream_time=convert.timestamp(ex.stream_time), retained_since=convert.timestamp(ex.retained_since),
        possibly_stale=ex.possibly_stale, holds_elsewhere=ex.holds_elsewhere,
    )
    if ex.count is not None:
        out.has_count = True
        out.count_event_id, count_time, out.count_quantity = ex.count
        out.count_time.FromMilliseconds(count_time)
    for rec, held, committed in ex.holds:
        out.holds.add(reservation_id=rec.reservation_id, order_ref=rec.order_ref, channel=rec.channel,
                      state=cast(pb.ReservationState, int(rec.state)), held=held, committed=committed,
                      expire_time=convert.timestamp(rec.expires_at))
    _fit_holds(out, max_message_bytes - FLAGS_BYTES)
    _add_newest_deltas(out, ex.deltas, max_message_bytes - FLAGS_BYTES - out.ByteSize())
    return out


def _fit_holds(out: pb.ExplainAvailabilityResponse, budget: int) -> None:
    """Leave out the last holds while the answer is larger than ``budget`` bytes."""
    excess = out.ByteSize() - budget
    if excess <= 0:
        return
    keep = len(out.holds)
    while excess > 0 and keep:
        keep -= 1
        excess -= _element_bytes(out.holds[keep].ByteSize())
    del out.holds[keep:]
    out.holds_truncated = True


def _add_newest_deltas(out: pb.ExplainAvailabilityResponse, deltas: Sequence[tuple[str, int, int]],
                       room: int) -> None:
    """The newest of ``deltas`` (E1 order) that fit in ``room`` bytes, listed in their order: for
    the analyst, the recent changes explain the numbers asked about; the older ones are in the log."""
    kept: list[pb.ExplainedFact] = []
    for source, at, delta in reversed(deltas):
        fact = pb.ExplainedFact(source=source, event_time=convert.timestamp(at), delta=delta)
        room -= _element_bytes(fact.ByteSize())
        if room < 0:
            out.deltas_truncated = True
            break
        kept.append(fact)
    kept.reverse()
    out.deltas_after_count.extend(kept)


def _element_bytes(size: int) -> int:
    """What one element of ``size`` bytes of a repeated message field numbered below 16 costs in
    the answer: its tag, its length (a varint) and itself."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size
