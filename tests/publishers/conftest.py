"""Fixtures the publisher tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.keys import CHANNELS, Keyspace


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[ChannelStore]:
    """The channel desk's store on the test's Redis, as an instance owning the keyspace writes it."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set(Keyspace("atp:").owner(CHANNELS), 1)
    store = ChannelStore(client, "atp:", epoch=lambda: 1)
    yield store
    await store.aclose()  # its write connections and the client
