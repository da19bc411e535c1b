"""Real ``Membership``s in random turns under faults of ownership's Redis calls (``membership_fuzz``):
after the faults stop and a few quiet rounds, every group is served by exactly one live process that
holds its lease and owner key, every receipt is counted once, every order across groups is held whole or
not at all (none acknowledged lost, nothing oversold), and the service said no error. Wider:
``python -m tests.atp_service.app.membership_fuzz --seeds 200``."""

from __future__ import annotations

import re

import pytest
import redis

from tests.atp_service.app.membership_fuzz import run

SEEDS, CHUNK, STEPS = 24, 8, 80


def _clean(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
async def test_random_turns_under_faults_end_served_once_and_counted(first: int, redis_url: str) -> None:
    bad = {}
    for seed in range(first, first + CHUNK):
        _clean(redis_url)
        findings, log = await run(seed, redis_url, STEPS)
        if findings:
            bad[seed] = findings + log[-40:]
    assert not bad, bad


async def test_the_fuzzer_plays_every_fault_and_turn_it_names(redis_url: str) -> None:
    """A fuzzer whose faults never happened would hold its invariants trivially."""
    seen: set[str] = set()
    for seed in range(6):
        _clean(redis_url)
        findings, log = await run(seed, redis_url, STEPS)
        assert not findings, findings
        seen |= {m[1] for line in log if (m := re.match(r"(?:step \d+|p\d+): (\w+)", line))}
        seen |= {"landed"} if any(line.endswith("late call(s) landed") for line in log) else set()
    for event in ("renew", "balance", "record", "reserve", "pause", "thaw", "lapse", "cut", "stop", "joined",
                  "slow", "lost", "answer_lost", "late", "landed"):
        assert event in seen, event
