"""What a channel published, read back at a start (``ChannelStore.load``) from a real Redis."""

from __future__ import annotations

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
        published, version = await store.load("web")
        assert len(published) == KEYS and version == 10 * KEYS
        assert published[(f"sku-{newest_at}", "DC")].version == 10 * KEYS
        await client.delete(store.stream("web"), store.state_key("web"))
        assert await store.load("web") == ({}, 0)
    finally:
        await store.aclose()
