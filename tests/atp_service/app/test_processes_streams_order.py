"""E1-E3 and E8 with several processes reading the input streams (``ownership = leases``): facts of the same
positions read by different processes' readers, each sent to its group's owner, in an order Redis chooses,
and the groups handed over between waves (each taken by another process, recovered from its snapshot and log,
E10): the final state is that of applying the facts sorted by E1, each identity once."""

from __future__ import annotations

import random
import time

import pytest
import redis

from atp_client import AtpClient
from tests.atp_service.app.test_processes import SHARDS, balanced, group_of, owned, processes, routed
from tests.atp_service.app.test_processes_streams import STREAMS, counted
from tests.atp_service.fact_helpers import random_facts, reference_on_hand, wait_consumed, with_duplicates
from tests.conftest import ServiceFactory
from tests.waiting import until


@pytest.mark.parametrize("seed", [20261204, 7, 1999])
async def test_facts_read_by_several_processes_across_hand_overs_end_as_sorted_by_event_time(
        start_leased_readers: ServiceFactory, redis_url: str, seed: int) -> None:
    running = await processes(start_leased_readers, 3)
    services = [service for service, _ in running]
    rng = random.Random(seed)
    facts = with_duplicates(rng, random_facts(rng, 600, 24, "o", int(time.time() * 1000) - 1000), 0.2)
    rng.shuffle(facts)
    assert {group_of(f.sku) for f in facts} == set(range(SHARDS))
    r = redis.Redis.from_url(redis_url)
    waves = 4
    for wave in range(waves):
        with r.pipeline(transaction=False) as pipe:
            for n, fact in enumerate(facts[wave::waves]):
                pipe.xadd(STREAMS[n % 2], fact.fields())
            pipe.execute()
        # A group handed over while its facts are read: by another process's turn each wave.
        service, _ = running[wave % len(running)]
        if owned(service) and service.membership is not None:
            await service.membership._hand_over(min(owned(service)))
    await wait_consumed(redis_url, list(STREAMS), timeout_s=60)
    await until(lambda: balanced(running) and routed(running), "every group served again", 60)
    assert r.xlen("atp:dlq") == 0 and r.xlen("atp:quarantine") == 0
    assert counted(services, "atp_forwarded_calls_total", method="RecordEvents", outcome="ok") > 0, "sent on"
    assert counted(services, "atp_groups_given_up_total", why="handed_over") >= waves, "handed over"
    expected = reference_on_hand(facts)
    async with AtpClient(f"127.0.0.1:{running[0][0].port}", timeout_s=10) as client:
        keys = sorted(expected)
        got = {(p.sku, p.location): p.on_hand for p in await client.availability(keys)}
    assert got == expected
