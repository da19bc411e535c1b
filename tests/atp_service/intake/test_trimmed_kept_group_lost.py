"""An entry read as trimmed from the reader's own pending list that Redis, back from older data, holds again is left
pending by the dead-letter script (``dead_letters.write``: neither dead-lettered nor acknowledged) to be read again.
The reader must then know it holds that entry unacknowledged (``Unacked.left``): a consumer group deleted meanwhile
(Redis back from data without it, an operator's XGROUP DESTROY) is made again before every entry the reader left
pending. Not told so, the group was made again after the newest entry read — past the one left pending, never
delivered again: its fact, which Redis holds, never applied and nothing dead-lettered. Real Redis, through a proxy that
holds the dead-letter script while Redis comes back holding the entry."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator

import redis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from atp_service.intake import unread
from tests.atp_service.fact_helpers import F, on_hand_of
from tests.atp_service.redis_proxy import Held, HoldingProxy
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until

STREAM, GROUP, CONSUMER = "atp:in:pos", "atp", "reader-1"


class ReleasingProxy(HoldingProxy):
    """``HoldingProxy`` whose held command can be let through late with its connection kept (``release``): its
    answer reaches the client, which goes on using the connection (``land`` closes it after the answer)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.released: set[int] = set()

    def release(self, held: Held) -> None:
        self.held.remove(held)
        self.released.add(id(held))
        held.upstream.write(bytes(held.data))

    async def _up(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, box: list[Held],
                  client: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if not box and any(marker in chunk for marker in self.markers):
                    box.append(Held(upstream, b"", client))
                    self.held.append(box[0])
                if box and id(box[0]) not in self.released:
                    box[0].data += chunk
                    continue
                upstream.write(chunk)
                await upstream.drain()
        upstream.close()


READ_SHA = hashlib.sha1(unread._READ.encode()).hexdigest().encode()  # the read of new entries (``GroupReader``)


@contextlib.asynccontextmanager
async def reader_behind(redis_server: EmbeddedRedis) -> AsyncIterator[tuple[ReleasingProxy, AtpService]]:
    """The service started reading ``STREAM`` as ``CONSUMER`` of ``GROUP`` through a ``ReleasingProxy`` in front of
    ``redis_server``: its Redis timeout long (30 s: a held command waits for the test's release, not a timeout), its
    owner check and its claims of other consumers' entries out of the way; however the block ends, the service
    stopped and the proxy closed."""
    proxy = ReleasingProxy("127.0.0.1", redis_server.port)
    config = make_config(input_streams=(STREAM,), consumer_group=GROUP, consumer_name=CONSUMER, redis_timeout_s=30,
                         owner_check_s=3600.0, claim_idle_ms=3_600_000, port=held_port())
    service = AtpService(config, await proxy.start())
    try:
        await service.start()
        yield proxy, service
    finally:
        await service.stop(grace_s=0.1)
        await proxy.close()


async def test_an_entry_left_pending_by_the_dead_letter_script_survives_its_group_made_again(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    e1 = r.xadd(STREAM, F("e1", "RECEIPT", "A", "L1", 5, now - 2000).fields())
    r.xreadgroup(GROUP, "other", {STREAM: ">"})  # delivered to another consumer, never claimed (claim_idle_ms)
    try:
        async with reader_behind(redis_server) as (proxy, service):
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                async def on_hand(sku: str, n: int) -> bool:
                    return await on_hand_of(client, [(sku, "L1")]) == {(sku, "L1"): n}

                e2 = r.xadd(STREAM, F("e2", "RECEIPT", "B", "L1", 3, now - 1000).fields())
                await until(lambda: on_hand("B", 3), "a newer entry read and applied: the newest the reader has seen")
                r.xclaim(STREAM, GROUP, CONSUMER, 0, [e1], justid=True)  # now pending with this reader
                image = r.dump(STREAM)
                r.xtrim(STREAM, minid=e2, approximate=False)  # the producer's trim took it: read [id, nil]
                proxy.hold(READ_SHA)  # a read fails: the reader reads its own pending list again
                await until(lambda: proxy.held, "a read of new entries sent")
                proxy.cut(proxy.held[0])
                proxy.drop()
                proxy.hold(b"TRIMMED_WHILE_PENDING")  # the dead-letter script of the entry read trimmed
                await until(lambda: proxy.held, "the entry read as trimmed, its dead letter on its way")
                r.restore(STREAM, 0, image, replace=True)  # Redis back from older data: the entry held again, pending
                r.xgroup_destroy(STREAM, GROUP)  # and then without the group (an operator, another loss)
                proxy.hold()
                proxy.release(proxy.held[0])  # the stream holds the entry: left pending, not dead-lettered
                await until(lambda: on_hand("A", 5), "the entry the stream holds applied once its group was made again")
            assert r.xlen("atp:dlq") == 0
    finally:
        r.close()
