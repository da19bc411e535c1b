"""A watch following a channel while the desk's writes fail in doubt and land late (C3, C4), against the real
service, Redis and a proxy that holds a write and delivers it late (``HoldingProxy``): the write's answer lost,
then (1) it never lands, (2) it lands after the settle's fence, (3) it lands before the fence. The watch is sent
exactly the stream's content after its snapshot, in version order, none skipped (a write settled as not landed
leaves its versions unused, the stream linked on past them by a marker), no value the desk did not confirm
published, and ends where the desk's published values are."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from atp_service.storage.channel_script import WRITE
from atp_service.storage.channel_store import _FENCE
from tests.atp_service.channel_helpers import desk_served, fact, one_dc_market, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
V0 = T * VERSIONS_PER_MS  # the start marker's, the run's first version: its updates follow on from it
"""The version before the first this start hands out (C3: a start's versions begin at its clock's floor)."""
WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()  # the desk's write on the wire (EVALSHA)
FENCE_SHA = hashlib.sha1(_FENCE.encode()).hexdigest().encode()
Kind = pb.WatchAvailabilityResponse
__all__ = ["proxy"]  # the fixture, used by name


async def test_a_watch_sends_only_what_landed_and_was_confirmed_in_order_C4(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    config = make_config(estate=write_estate(tmp_path, one_dc_market(0, 1000.0)), redis_timeout_s=10.0,
                         input_streams=())
    async with desk_served(config, proxy.url, ManualClock(T)) as (_, desk, client):
        feed = desk.feeds["market"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 100, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "the baseline published")
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
        while (await call.read()).kind != Kind.KIND_SNAPSHOT_END:
            pass
        sent: list[tuple[int, str, int, int]] = []  # (version, sku, quantity, published_version when read)

        async def follow() -> None:
            while True:
                message = await call.read()
                assert message.kind == Kind.KIND_CHANGES, message
                sent.extend((u.version, u.sku, u.quantity, feed.published_version) for u in message.updates)

        follower = asyncio.ensure_future(follow())
        sale = iter(range(1, 100))

        async def write_held(*markers: bytes) -> None:
            proxy.hold(*markers)
            n = next(sale)
            await client.record_events([fact(f"s{n}", "SALE", "sku-a", "dc-1", 1, T + n)])
            await until(lambda: any(h.marker == WRITE_SHA for h in proxy.held), "the desk's write held")

        # (1) never lands: settled not landed, its versions written again
        await write_held(WRITE_SHA)
        proxy.cut(proxy.held[0])
        proxy.hold()
        proxy.drop()
        # its versions passed over, a marker linking the stream on from V0 + 1 (it may have landed and been lost, C3)
        await until(lambda: feed.published_version == V0 + 4 and not feed.in_flight, "(1) written again")
        # (2) lands after the settle's fence: refused, nothing more in the stream
        await write_held(WRITE_SHA)
        late = proxy.held[0]
        proxy.cut(late)
        proxy.hold()
        await until(lambda: feed.published_version == V0 + 7 and not feed.in_flight, "(2) settled and written again")
        reply = await proxy.land(late)
        assert reply.startswith(b"-"), reply  # fenced: it changed nothing
        # (3) lands before the fence: in the stream above what the desk published until the settle confirms it
        await write_held(WRITE_SHA, FENCE_SHA)
        write = proxy.held[0]
        proxy.cut(write)
        await until(lambda: any(h.marker == FENCE_SHA for h in proxy.held), "(3) the settle's fence held")
        await proxy.land(write)  # its answer goes nowhere: the client cut it
        assert (await stream_updates(redis_url, "market"))[-1].version == V0 + 8
        assert feed.published_version == V0 + 7 and feed.in_flight  # in the stream, not confirmed
        # The watch read it, and holds it until the desk settles the write (C4): nothing sent of it meanwhile.
        await until(lambda: len(desk.confirmations.next()._waiters or ()) == 1, "(3) the watch holding it back")
        assert all(v <= V0 + 7 for v, *_ in sent)
        proxy.hold()
        await proxy.land(next(h for h in proxy.held if h.marker == FENCE_SHA))
        await until(lambda: feed.published_version == V0 + 8 and not feed.in_flight, "(3) settled: landed")
        n = next(sale)  # and an ordinary write after it all
        await client.record_events([fact(f"s{n}", "SALE", "sku-a", "dc-1", 1, T + n)])
        await until(lambda: feed.published_version == V0 + 9 and not feed.in_flight, "a write after it all")

        stream = await stream_updates(redis_url, "market")
        await until(lambda: len(sent) >= len(stream) - 1, "the watch told every change", 20)
        follower.cancel()
        call.cancel()
        assert [(v, sku, q) for v, sku, q, _ in sent] == [(u.version, u.sku, u.quantity) for u in stream[1:]]
        assert all(v <= published for v, _, _, published in sent)  # nothing sent before the desk confirmed it
        assert [u.quantity for u in stream] == [100, 99, 98, 97, 96]  # each sale once: none lost, none twice
        assert feed.published[("sku-a", "")].quantity == 96
