"""Redis back from older data (a failover to a replica that lagged, a restart from an older AOF or RDB): the shard
log without the entry that applied a fact, the input stream's group back before the fact's entry, which Redis kept.
The reader reads the entry again; the shard, whose memory still holds the fact, judges it a duplicate (E8) — an
answer from memory Redis no longer holds. Acknowledged so, the entry was gone for good and its fact never applied:
the service found its log short later (its owner check) and restarted, and nothing read the entry again (R7: an entry
Redis kept is applied once). Real Redis; the loss is made by putting back every key as it was (``DUMP``/``RESTORE``,
the input stream's group position included), the entry kept."""

from __future__ import annotations

import time

import redis

from tests.atp_service.fact_helpers import F, on_hand_of, send_stream, wait_consumed
from tests.conftest import ServiceFactory
from tests.waiting import until

STREAM = "atp:in:pos"


def _image(r: redis.Redis) -> dict[bytes, bytes]:
    """Every key as Redis holds it now (what it later comes back from)."""
    return {key: r.dump(key) for key in r.keys("*")}  # type: ignore[misc]


def _back_to(r: redis.Redis, image: dict[bytes, bytes], group_at: bytes) -> None:
    """Redis comes back from ``image``; the input stream kept its entries (they were there before the image), its
    group back at ``group_at``."""
    for key in r.keys("*"):  # type: ignore[union-attr]
        if key not in image and key != STREAM.encode():
            r.delete(key)
    for key, data in image.items():
        if key != STREAM.encode():
            r.restore(key, 0, data, replace=True)
    r.xgroup_setid(STREAM, "atp", group_at)


async def test_an_entry_read_again_after_redis_lost_its_fact_is_applied_not_acknowledged_as_a_duplicate(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service(input_streams=(STREAM,), owner_check_s=3600.0)
    (before,) = r.xinfo_groups(STREAM)
    image = _image(r)
    await send_stream(redis_url, STREAM, [F("e1", "RECEIPT", "A", "L1", 5, int(time.time() * 1000) - 1000)])
    await wait_consumed(redis_url, [STREAM])
    assert await on_hand_of(client, [("A", "L1")]) == {("A", "L1"): 5}
    _back_to(r, image, before["last-delivered-id"])

    def settled() -> bool:  # the entry acknowledged, or the service stopping to be restarted (exit 4)
        (group,) = r.xinfo_groups(STREAM)
        return service.failed.is_set() or (not group["pending"] and not group["lag"])

    await until(settled, "the entry read again decided")
    await service.stop(grace_s=0.1)
    _, client = await start_service(input_streams=(STREAM,), owner_check_s=3600.0)  # its supervisor restarts it
    await wait_consumed(redis_url, [STREAM])
    assert await on_hand_of(client, [("A", "L1")]) == {("A", "L1"): 5}, "an entry Redis kept was never applied"
    r.close()
