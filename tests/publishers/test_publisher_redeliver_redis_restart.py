"""A redelivery sweep over the keys owed (one HSCAN page a step) across a restart of Redis: HSCAN's
cursor holds within one server's life only (a restarted server — or a replica promoted, or a node a
key moved to — builds the hash again under another hash seed), so the sweep's cursor, read against
the new table, passes over keys it never saw. The sweep must not end while the owed hash holds a key
it did not see. A real redis-server, restarted from its AOF, and a real local webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atp_service import EmbeddedRedis
from atp_service.storage.channel_wire import script_item
from atp_service.storage.clients import connect_any
from publishers import PublisherMetrics
from tests.publishers.test_publisher import Receiver, receiver_factory
from tests.publishers.test_publisher_redeliver import REMEMBERED, last_values, outcome, publisher
from tests.publishers.test_publisher_trimmed import value
from tests.waiting import until

__all__ = ["receiver_factory"]  # a fixture
STATE = "atp:{avail}:web:state"
KEYS = 1000
"""Past the listpack size of a hash: a hashtable, paged by HSCAN, its buckets placed by the server's hash seed."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A Redis of this test's own (it is restarted), every write in its AOF before it answers."""
    own = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    yield own
    own.stop()


class RestartsRedisOnFirstRequest(Receiver):
    """Takes every request; before answering the first, restarts Redis (a new process: the same data
    from its AOF, another hash seed) — as a failover or a restart while a redelivery sweep is half-way."""

    def __init__(self, redis_server: EmbeddedRedis) -> None:
        super().__init__()
        self.redis_server, self.restarted = redis_server, False

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        if not self.restarted:
            self.restarted = True
            self.redis_server.stop()
            self.redis_server.start()
        return super().handle(body, headers)


async def test_a_redelivery_sweep_across_a_redis_restart_leaves_no_owed_key_behind_C4(
        server: EmbeddedRedis, receiver_factory: Any) -> None:
    """Every key owed its newest value (a restart finds what an outage left in Redis); none a stock-out, so
    the stock-outs' sweep sends nothing and the other values' sweep is the one under way when Redis restarts,
    after its first page. Its kept cursor, read against the restarted server's table, skipped about a sixth
    of the keys; the sweep ended with them still owed and nothing owed recorded, so they waited for the next
    retryable dead letter or a restart of the publisher (here the timer is an hour)."""
    client = connect_any(server.url, 5.0)  # as atp-publisher's: a connection the restart closed is made again
    try:
        updates = [value(f"s{n}", n + 1, n + 1) for n in range(KEYS)]
        await client.hset(STATE, mapping={f"{u.sku}\t": script_item(u)[-1] for u in updates})
        await client.hset(REMEMBERED, mapping={f"{u.sku}\t": f"{u.version} retry" for u in updates})
        receiver = RestartsRedisOnFirstRequest(server)
        metrics = PublisherMetrics()
        running = publisher(client, receiver_factory(receiver), metrics, read_count=100, delivery_batch=100)
        task = asyncio.create_task(running.run())
        try:
            # The sweep over: a page redelivered (its answer read: the destination answers), and no pass due
            # (nothing owed recorded: the timer's is an hour away).
            await until(lambda: outcome(metrics, "redelivered") > 0 and not running._redelivery.due(), "the sweep over")
            assert not task.done(), task
            left = {key.decode().partition("\t")[0] for key in await client.hkeys(REMEMBERED)}
            assert left == set(), f"{len(left)} keys still owed after the sweep ended"
            assert last_values(receiver) == {u.sku: (u.quantity, u.version) for u in updates}
        finally:
            running.stop()
            await asyncio.wait_for(task, 5)
            await running.adapter.close()
    finally:
        await client.aclose()
