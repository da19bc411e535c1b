"""A fact quarantined from an input-stream entry is written to the quarantine stream and its entry
acknowledged in one script: once the stream holds the fact, the entry is never read again, so the
decision the stream shows stands (E8: decided once). A fact quarantined for want of room (a shard's
bound, or ``max_on_hand``) is not quarantined again when decided again: room may have come back."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from atp_service.config import ServiceConfig
from atp_service.intake.ingest import StreamIngestor
from atp_service.storage.clients import connect_any
from reservation import Limits
from tests.atp_service.fact_helpers import F, held_script, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
STREAM = "atp:in:pos"


async def _on_hand(service: AtpService) -> int:
    client = AtpClient(f"127.0.0.1:{service.port}")
    try:
        (position,) = await client.availability([("A", "S1")])
        return int(position.on_hand)
    finally:
        await client.close()


async def quarantine_write_held(service: AtpService, r: redis.Redis, redis_url: str, proxy: HoldingProxy) -> None:
    """``service`` (one shard remembering one fact at most) started; ``e1`` remembered, the shard at its bound;
    ``e2`` read past it and its quarantine write sent, its answer lost and the script kept from Redis by
    ``proxy`` (``proxy.held[0]``: landed when the test says)."""
    await service.start()
    r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields())
    await wait_consumed(redis_url, [STREAM])
    proxy.hold(held_script(r), reset=True)
    r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())
    await until(lambda: proxy.held, "the quarantine write sent, its answer lost")


async def test_a_fact_quarantined_for_want_of_room_whose_write_s_answer_was_lost_is_not_applied_later(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    """Defect: the quarantine write ran but its answer was lost, so the entry stayed pending; read again by
    a start with room (the bound raised, as the runbook says), its fact was applied, while the quarantine
    stream, what operators reconcile against, still showed it quarantined — not applied — and their resend
    of it from there was then a duplicate. Its entry is now acknowledged by the write itself: the quarantine
    stream's word stands, and the resend is the one applied."""
    r = redis.Redis.from_url(redis_url)
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    tight = make_config(shards=1, redis_timeout_s=0.5, limits=Limits(max_dedupe_entries_per_shard=1))
    service = AtpService(tight, await proxy.start())
    try:
        await quarantine_write_held(service, r, redis_url, proxy)
        await proxy.land(proxy.held[0])  # it ran: the fact is in the quarantine stream
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()  # the retries meanwhile held, then dropped
        await proxy.close()
    roomy = make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=10))
    service = AtpService(roomy, redis_url)
    try:
        await service.start()
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 4  # e2 as the quarantine stream says: not applied
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # the operator's resend, with room now
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(service) == 9
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
    finally:
        await service.stop()


async def test_an_owed_quarantine_write_leaves_alone_an_entry_another_consumer_claimed_meanwhile(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    """Defect: the write owed (the script never ran, its answer lost) was made once Redis answered again, however
    long that took: past ``claim_idle_ms`` another process had claimed the entry and decided its fact — applied,
    had it room — and the write then put the fact on the quarantine stream as not applied, and acknowledged the
    entry the other process held. The script now writes (and acknowledges) a fact only while its entry is still
    pending to this consumer: the one that holds it decides, and writes it if quarantined there."""
    r = redis.Redis.from_url(redis_url)
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    tight = make_config(shards=1, redis_timeout_s=0.5, limits=Limits(max_dedupe_entries_per_shard=1))
    service = AtpService(tight, await proxy.start())
    try:
        await service.start()
        assert service.desk is not None
        owed = service.desk.quarantine.owed
        r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields())  # remembered: the shard is at its bound
        await wait_consumed(redis_url, [STREAM])
        proxy.hold(held_script(r), reset=True)  # the quarantine script, and each try again: never run
        entry = r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # a new fact past the bound
        await until(lambda: owed and proxy.held, "the quarantine write owed, its script held")
        # Another process's claim of an entry idle past claim_idle_ms (XAUTOCLAIM), here at once: it decides e2.
        assert r.xclaim(STREAM, "atp", "other", 0, [entry], justid=True) == [entry]
        proxy.hold()
        proxy.drop()  # the scripts held never run; Redis answers this process again
        await until(lambda: not owed, "the owed write settled")
        assert r.xrange("atp:quarantine") == [], "not written: the other process decides e2"
        (pending,) = r.xpending_range(STREAM, "atp", "-", "+", 10)
        assert (pending["message_id"], pending["consumer"]) == (entry, b"other"), "still the other's to settle"
    finally:
        await service.stop()
        await proxy.close()


async def test_a_quarantine_write_of_the_run_before_landing_late_does_not_quarantine_a_fact_the_restart_applied(
        redis_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the quarantine write of ``e2`` (the shard at its bound) was sent and its answer lost; the process
    stopped, the write owed in a memory gone with it. Started again with room, under the same consumer name (kept
    stable), the reader read ``e2`` from its own pending list and applied it — and the write of the run before,
    landing then (a delayed packet), found the entry pending to that consumer, put ``e2`` on the quarantine stream as
    not applied and acknowledged it. Each start now begins a run of its consumer in Redis before it reads its pending
    entries, and a write of a run before lands nothing (R7: a late landing never taken; E8: decided once)."""
    r = redis.Redis.from_url(redis_url)
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    tight = make_config(shards=1, redis_timeout_s=0.5, limits=Limits(max_dedupe_entries_per_shard=1))
    service = AtpService(tight, await proxy.start())
    try:
        await quarantine_write_held(service, r, redis_url, proxy)
    finally:
        await service.stop()
    late, landed = proxy.held[0], list[bytes]()
    service = AtpService(make_config(shards=1, input_streams=(), limits=Limits(max_dedupe_entries_per_shard=10)),
                         redis_url)
    try:
        await service.start()
        assert service.desk is not None
        settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings,
                                       consumer_name=tight.ingest_settings.consumer_name)  # the same consumer
        reader = StreamIngestor(connect_any(redis_url, 2.0), service.desk, settings, service.clock)
        record = service.desk.record

        async def applied_then_landed(*args: Any, **kwargs: Any) -> Any:
            results = await record(*args, **kwargs)  # e2 applied (room now), its entry not acknowledged yet
            landed.append(await proxy.land(late))  # the run before's write lands now
            return results

        monkeypatch.setattr(service.desk, "record", applied_then_landed)
        await reader._create_groups()  # its start
        await reader._retry_pending()  # its own pending entries first, as its loop does
        assert landed, "the late write landed"
        assert r.xpending(STREAM, "atp")["pending"] == 0
        assert await _on_hand(service) == 9
        assert r.xrange("atp:quarantine") == [], "e2, applied, on the quarantine stream as not applied"
        await reader._client.aclose()
    finally:
        proxy.drop()
        await service.stop()
        await proxy.close()


@pytest.mark.parametrize("lost", ["gone", "behind"])
async def test_a_consumer_s_run_redis_lost_does_not_keep_its_quarantine_writes_from_landing(
        redis_url: str, lost: str) -> None:
    """Defect: the run a process took at its start (``INCR``) was lost by Redis (a failover to a replica the ``INCR``
    had not reached, or a restart from older data): the key gone, or back at the run before. The quarantine script
    took every write of the process's run for one of a run before, for as long as the process ran: a fact quarantined
    for want of room was never written to the quarantine stream, its entry pending for ever, read again and decided
    again every second (liveness). Only a later run fences a write out; a run Redis lost is taken again."""
    r = redis.Redis.from_url(redis_url)
    service = AtpService(make_config(shards=1, limits=Limits(max_dedupe_entries_per_shard=1)), redis_url)
    try:
        await service.start()
        (key,) = r.keys("atp:quarantine:written:*:run:*")
        assert int(r.get(key)) == 1
        if lost == "gone":
            r.delete(key)
        else:
            r.set(key, 0)
        r.xadd(STREAM, F("e1", "RECEIPT", "A", "S1", 4, T).fields())  # remembered: the shard is at its bound
        r.xadd(STREAM, F("e2", "RECEIPT", "A", "S1", 5, T + 1).fields())  # past the bound: quarantined
        await wait_consumed(redis_url, [STREAM], timeout_s=10)
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
        assert int(r.get(key)) == 1, "the run taken again"
        assert await _on_hand(service) == 4
    finally:
        await service.stop()
