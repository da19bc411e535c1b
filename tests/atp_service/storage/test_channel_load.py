"""What a channel published, read back at a start (``ChannelStore.load``) from a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from atp_service import EmbeddedRedis
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.log import connect

T = 1_700_000_000_000
KEYS = 25_000
"""Past the hash's compact encoding: HSCAN reads it a page (of about 10,000) at a time."""


async def test_load_keeps_the_newest_version_of_every_page_when_the_stream_lost_it_C3(redis_url: str) -> None:
    """The newest version is kept while the state hash is read page by page (no pass over every
    value after it): a stream trimmed or lost below it does not make versions go back (C3)."""
    client = connect(redis_url, 5.0)
    store = ChannelStore(client, "load:", epoch=lambda: 1)
    newest_at = 17_345
    try:
        state = {f"sku-{n}\tDC": f"{n % 7} {n + 1 if n != newest_at else 10 * KEYS} {T} IN_STOCK"
                 for n in range(KEYS)}
        await client.hset(store.state_key("web"), mapping=state)  # type: ignore[arg-type]
        await client.xadd(store.stream("web"), {"v": "1"}, id="3-0")  # a stream left far behind the hash
        published, version, reached = await store.load("web")
        assert len(published) == KEYS and version == 10 * KEYS and reached == 3, "the stream's own last id kept apart"
        assert published[(f"sku-{newest_at}", "DC")].version == 10 * KEYS
        await client.delete(store.stream("web"), store.state_key("web"))
        assert await store.load("web") == ({}, 0, 0)
    finally:
        await store.aclose()


class RestartsRedisAfterAPage:
    """A connection (the client's own kind) that, once armed, restarts Redis (a new process: the same data
    from its AOF, another hash seed) after the first HSCAN page it read that the hash's end does not follow:
    as a failover or a restart between two pages of a load. The loop sees every socket closed meanwhile."""

    redis_server: EmbeddedRedis | None = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = await super().read_response(*args, **kwargs)  # type: ignore[misc]
        server = RestartsRedisAfterAPage.redis_server
        if server is not None and isinstance(reply, list) and len(reply) == 2 and reply[0] not in (b"0", "0"):
            RestartsRedisAfterAPage.redis_server = None
            await asyncio.to_thread(restart, server)
        return reply


def restart(redis_server: EmbeddedRedis) -> None:
    redis_server.stop()
    redis_server.start()


async def test_a_load_across_a_redis_restart_reads_every_key_C1_C4(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarted (or failed over) between two pages of the state hash: redis-py made the closed connection
    again without a word, and the cursor kept across it, read against the restarted server's table, passed over
    keys. The load returned without them: the desk took them for never published, and a key the estate no longer
    curates (or no position stands behind) kept its old number at the destination (C1, C4)."""
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    client = connect(server.url, 5.0)
    pool = client.connection_pool
    pool.connection_class = type("Restarting", (RestartsRedisAfterAPage, pool.connection_class), {})
    store = ChannelStore(client, "load:", epoch=lambda: 1)
    try:
        state = {f"sku-{n}\tDC": f"{n % 7} {n + 1} {T} IN_STOCK" for n in range(KEYS)}
        await client.hset(store.state_key("web"), mapping=state)  # type: ignore[arg-type]
        RestartsRedisAfterAPage.redis_server = server
        published, version, _ = await store.load("web")
        assert RestartsRedisAfterAPage.redis_server is None, "Redis restarted during the load"
        missed = set(state) - {f"{sku}\t{location}" for sku, location in published}
        assert missed == set(), f"{len(missed)} keys not loaded"
        assert version == KEYS
        assert [getattr(r, "event", None) for r in caplog.records].count("channel_load_again") == 1
    finally:
        RestartsRedisAfterAPage.redis_server = None
        await store.aclose()
        server.stop()
