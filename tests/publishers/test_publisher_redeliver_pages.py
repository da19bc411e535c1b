"""A redelivery pass over many owed keys (more than one page of the remembered hash): a page of the
stock-outs' sweep that holds no stock-out sends nothing, and the sweep goes on to the next page in the
same pass, not a ``redeliver_interval_s`` later. A real Redis and a real local webhook receiver."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from publishers import PublisherMetrics
from tests.publishers.test_publisher import Receiver, receiver_factory, run_until
from tests.publishers.test_publisher_redeliver import REMEMBERED, dead_lettered, last_values, publisher
from tests.publishers.test_publisher_trimmed import desk_writes, value

KEYS = 1100
"""Past the listpack size of a hash (hash-max-listpack-entries, 512 by default): HSCAN pages the
remembered keys, ``read_count`` at a time."""
PAGE = 200
__all__ = ["receiver_factory"]  # a fixture


async def test_owed_values_on_pages_without_a_stock_out_wait_for_no_timer_after_a_restart_C4(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """A destination down: every value dead-lettered and owed. A publisher started once it is back makes its
    first pass at once, but that pass looked at one page of the stock-outs' sweep; with no stock-out on it
    nothing was sent, so nothing told the publisher the destination answers, and each next page waited
    ``redeliver_interval_s`` (30 s by default: 100,000 owed keys, 200 pages, held every value — a stock-out on
    a late page among them — for 100 minutes on a quiet channel). Here the interval is an hour."""
    receiver = Receiver(always_fail=True)
    url = receiver_factory(receiver)
    settings = {"read_count": PAGE, "delivery_batch": 100}
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(KEYS)])
    await run_until(publisher(client, url, PublisherMetrics(), max_attempts=1, **settings),
                    await dead_lettered(client, KEYS))
    assert await client.hlen(REMEMBERED) == KEYS
    receiver.always_fail = False  # back; nothing changes in the channel

    async def converged() -> bool:
        return len(last_values(receiver)) == KEYS and await client.hlen(REMEMBERED) == 0

    await run_until(publisher(client, url, PublisherMetrics(), **settings), converged)
    assert last_values(receiver) == {f"s{n}": (n + 1, n + 1) for n in range(KEYS)}
