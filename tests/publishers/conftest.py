"""Fixtures the publisher tests share."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.keys import CHANNELS, Keyspace


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis, closed after the test."""
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[ChannelStore]:
    """The channel desk's store on the test's Redis, as an instance owning the keyspace writes it."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set(Keyspace("atp:").owner(CHANNELS), 1)
    store = ChannelStore(client, "atp:", epoch=lambda: 1)
    yield store
    await store.aclose()  # its write connections and the client


@pytest.fixture(autouse=True)
def root_logger_kept() -> Iterator[None]:
    """``atp-publisher``'s ``main`` (run in-process by some tests) sets up the root logger's handlers
    and level; put back after, so that no later test in the worker logs through what it left."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
