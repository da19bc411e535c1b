"""A publisher killed (``kill -9``, an OOM kill, a node lost) at the worst moment: what it had read and
not yet made durable in Redis must not be lost (C4: a stock-out never left unpublished)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.nodes import Nodes
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from tests.publishers.test_publisher import config
from tests.publishers.test_publisher_trimmed import (
    STREAM,
    blocked_reading,
    deliver_until,
    delivered,
    stock_out_trimmed_before_the_read,
    value,
)
from tests.waiting import until


class Killed(BaseException):
    """The process died here: nothing after it runs (not an ``Exception``: no handler of the publisher's takes it)."""


class DiesOnce:
    """The publisher's Redis client (a real one underneath), through which the process dies the moment
    ``died()`` (asked of Redis after each reply) first holds: every call after that reply raises ``Killed``,
    so nothing the publisher meant to write next reaches Redis, as with ``kill -9``."""

    def __init__(self, client: Any, died: Callable[[], Any]) -> None:
        self._client, self._died, self.dead = client, died, False

    def __getattr__(self, name: str) -> Any:
        if self.dead:
            raise Killed(name)
        attr = getattr(self._client, name)
        if name == "pipeline" or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:  # redis-py's commands return awaitables: not async defs
            return self._then_maybe_die(attr(*args, **kwargs))

        return call

    async def _then_maybe_die(self, reply: Awaitable[Any]) -> Any:
        if self.dead:
            raise Killed("after the reply")
        answer = await reply
        self.dead = self.dead or bool(await self._died())
        return answer


async def test_a_kill_once_a_read_took_the_group_past_a_gap_leaves_its_keys_owed(
        store: ChannelStore, tmp_path: Path) -> None:
    """The read that found a gap (entries trimmed between the check of the stream's first entry and the
    read) took the group past it in Redis; the resync owed was raised by a second call after its reply.
    Killed between the two, the next start found the group past the gap and nothing owed: "b", a
    stock-out, never reached the destination (C4). The read and the mark are now one script call."""
    await desk_writes_and_deliver_a(store, tmp_path)
    out = tmp_path / "feed.jsonl"

    async def past_the_gap() -> bool:
        groups: Any = await store.client.xinfo_groups(STREAM)
        return any(g["last-delivered-id"] == b"3-0" for g in groups)

    client = DiesOnce(store.client, past_the_gap)
    publisher = Publisher(config(group="jsonl", block_ms=60_000), client, JsonlAdapter(out), PublisherMetrics(),
                          writer=Nodes(store.client))
    task = asyncio.create_task(publisher.run())
    await until(lambda: blocked_reading(store), "the publisher waiting for new entries")
    await stock_out_trimmed_before_the_read(store)
    await asyncio.wait([task], timeout=10)
    assert client.dead and task.done() and isinstance(task.exception(), Killed), "it did not read past the gap"
    await store.client.delete(config(group="jsonl").lease_key)  # a lease left by the dead process: lapsed
    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK"), "b": (0, 2, "OUT_OF_STOCK"),
                                              "c": (3, 3, "IN_STOCK")})


async def desk_writes_and_deliver_a(store: ChannelStore, tmp_path: Path) -> None:
    """"a" written and delivered (the group at version 1), the publisher stopped."""
    await store.write([("web", 100_000, [value("a", 5, 1)])])
    await deliver_until(store, tmp_path / "feed.jsonl", "jsonl", {"a": (5, 1, "IN_STOCK")})
    assert delivered(tmp_path / "feed.jsonl") == {"a": (5, 1, "IN_STOCK")}
