"""A DUPLICATE answered from a shard's memory, after Redis came back from older data that lost the log entry which
applied the fact, told a caller its fact was durable when Redis held nothing of it (R7): the caller never sends it
again and the fact is lost for good. ``duplicates_durable`` checked RecordEvents' ordinary facts only; a fact
stamped ahead of the clock (E7: ``applied_or_refused``) and a LoadCounts row answered DUPLICATE were acknowledged
unchecked. Real Redis; the loss is made by putting back every key as it was (``DUMP``/``RESTORE``)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from atp_client import AtpError
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.fact_helpers import F, on_hand_of
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
AHEAD_MS = 10 * 60_000  # past the allowed skew (5 min)


def _image(r: redis.Redis) -> dict[bytes, bytes]:
    return {key: r.dump(key) for key in r.keys("*")}  # type: ignore[misc]


def _back_to(r: redis.Redis, image: dict[bytes, bytes]) -> None:
    """Redis comes back from ``image``: what was written since is gone."""
    for key in r.keys("*"):  # type: ignore[union-attr]
        if key not in image:
            r.delete(key)
    for key, data in image.items():
        r.restore(key, 0, data, replace=True)


async def test_a_fact_ahead_of_the_clock_redis_lost_is_not_answered_a_duplicate(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    clock = ManualClock(T + AHEAD_MS)
    _, client = await start_service(clock=clock, owner_check_s=3600.0)
    image = _image(r)
    fact = F("e1", "RECEIPT", "A", "L1", 4, T + AHEAD_MS - 60_000)
    assert [x.outcome for x in await client.record_events([fact.pb()])] == [pb.FACT_OUTCOME_APPLIED]
    _back_to(r, image)
    clock._now = T  # stepped back (NTP): the fact is now ahead of this process's clock (E7)
    try:
        outcomes = [x.outcome for x in await client.record_events([fact.pb()])]
    except AtpError as exc:
        outcomes = [exc.code()]  # type: ignore[list-item]
    assert pb.FACT_OUTCOME_DUPLICATE not in outcomes, "a fact Redis lost acknowledged as a duplicate"
    _, client = await start_service(clock=ManualClock(T + AHEAD_MS), owner_check_s=3600.0)  # restarted
    assert [x.outcome for x in await client.record_events([fact.pb()])] == [pb.FACT_OUTCOME_APPLIED]
    assert await on_hand_of(client, [("A", "L1")]) == {("A", "L1"): 4}
    r.close()


def _counts(at: int) -> pb.LoadCountsRequest:
    return pb.LoadCountsRequest(source="erp", skus=["A"], locations=["L1"], sku_index=np.zeros(1, "<u4").tobytes(),
                                location_index=np.zeros(1, "<u4").tobytes(), on_hand=np.full(1, 7, "<i8").tobytes(),
                                as_of=np.full(1, at, "<i8").tobytes())


async def test_a_count_redis_lost_is_not_answered_a_duplicate(start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    clock = ManualClock(T)
    _, client = await start_service(clock=clock, owner_check_s=3600.0)
    image = _image(r)
    assert (await client.load_counts(_counts(T - 1000))).applied == 1
    _back_to(r, image)
    with pytest.raises(AtpError):  # not known to be held: refused, to be sent again
        answer = await client.load_counts(_counts(T - 1000))
        assert not answer.duplicate, "a count Redis lost acknowledged as a duplicate"
    _, client = await start_service(clock=clock, owner_check_s=3600.0)  # restarted
    assert (await client.load_counts(_counts(T - 1000))).applied == 1
    assert await on_hand_of(client, [("A", "L1")]) == {("A", "L1"): 7}
    r.close()
