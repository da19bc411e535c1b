"""C2: a publisher's rate limit (``--rate``, ``--burst``) holds across its group's lease changing hands. Its token
bucket started full at every taking of the lease: a lease lost and taken again (a slow Redis, a renewal refused),
or a standby taking over from a holder that had just spent its burst, sent a whole burst more past the
destination's quota, again at each move. Real Redis; the publisher's clock is a fake its own waits move on."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from publishers import Publisher, PublisherConfig, PublisherMetrics
from reservation import ChannelUpdate
from tests.publishers.test_publisher import publish, update
from tests.waiting import until

RATE, BURST = 1.0, 5
LEASE_KEY = "atp:{avail}:web:lease:webhook"
DELIVERED = "atp:{avail}:web:delivered:webhook"


class _Timed:
    """An adapter noting the (fake) time each request went out, and the versions it carried."""

    name = "timed"

    def __init__(self, clock: dict[str, int]) -> None:
        self.clock = clock
        self.sent: list[tuple[int, list[int]]] = []

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        self.sent.append((self.clock["ms"], [u.version for u in updates]))

    async def close(self) -> None:
        return None

    def versions(self) -> set[int]:
        return {v for _, versions in self.sent for v in versions}


def publisher_on(client: aioredis.Redis, clock: dict[str, int], adapter: _Timed, **lease: Any) -> Publisher:
    async def fake_sleep(seconds: float) -> None:  # the rate limit's waits move the fake clock, no real wait
        clock["ms"] += int(seconds * 1000) + 1
        await asyncio.sleep(0)

    config = PublisherConfig(channel="web", group="webhook", block_ms=50, rate_limit_per_s=RATE, burst=BURST,
                             delivery_batch=BURST, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, **lease)
    return Publisher(config, client, adapter, PublisherMetrics(), sleep=fake_sleep, now_ms=lambda: clock["ms"])


def within_rate(sent: list[tuple[int, list[int]]]) -> None:
    """By each request's time t, no more sent than a bucket of ``BURST`` refilling at ``RATE`` allows."""
    for at, _ in sent:
        by_then = sum(len(versions) for when, versions in sent if when <= at)
        assert by_then <= BURST + RATE * at / 1000, f"{by_then} updates sent by {at} ms: {sent}"


async def test_a_lease_lost_and_taken_again_sends_no_second_burst(client: aioredis.Redis) -> None:
    clock = {"ms": 0}
    adapter = _Timed(clock)
    publisher = publisher_on(client, clock, adapter, lease_s=1.5, send_timeout_s=0.5)
    await publish(client, [update(f"a{n}", n, n) for n in range(1, BURST + 1)])
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: _recorded(client, BURST), "the burst recorded")
        await client.set(LEASE_KEY, "another publisher", px=60_000)  # its next renewal is refused: lost
        registry, labels = publisher.metrics.registry, {"channel": "web", "group": "webhook"}
        await until(lambda: registry.get_sample_value("atp_publisher_lease_lost_total", labels), "the lease lost")
        await client.delete(LEASE_KEY)  # free again: the same publisher takes it back
        await publish(client, [update(f"b{n}", n, BURST + n) for n in range(1, BURST + 1)])
        await until(lambda: len(adapter.versions()) == 2 * BURST, "the second five delivered")
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 10)
    within_rate(adapter.sent)


async def test_a_standby_taking_over_sends_no_second_burst(client: aioredis.Redis) -> None:
    clock = {"ms": 0}
    first, second = _Timed(clock), _Timed(clock)
    holder = publisher_on(client, clock, first)
    await publish(client, [update(f"a{n}", n, n) for n in range(1, BURST + 1)])
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: _recorded(client, BURST), "the first holder's burst recorded")
    finally:
        holder.stop()  # the lease released: the standby takes it at once
        await asyncio.wait_for(task, 10)
    standby = publisher_on(client, clock, second)
    await publish(client, [update(f"b{n}", n, BURST + n) for n in range(1, BURST + 1)])
    task = asyncio.create_task(standby.run())
    try:
        await until(lambda: len(second.versions()) == BURST, "the new holder delivers")
    finally:
        standby.stop()
        await asyncio.wait_for(task, 10)
    within_rate(first.sent + second.sent)


async def _recorded(client: aioredis.Redis, count: int) -> bool:
    return int(await client.hlen(DELIVERED)) >= count
