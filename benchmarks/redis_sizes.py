"""Bytes per item of each key the service and a publisher keep in Redis (docs/OPERATIONS.md, "Redis memory").

    python benchmarks/redis_sizes.py [--positions 20000]

A real ``redis-server`` (started here, AOF) and the real service in this process (4 shards, a per-location channel
``pickup`` over the stores, an estate of ``sku-00000001`` x ``store-0001`` ids) write their own keys: ``--positions``
COUNT facts in batches of 500 (each shard's log, the channel's stream and state hash), Reserves of 2 and of 4 lines
one at a time (a log entry each), as many facts stamped past the grace window through gRPC and again through the WMS
input stream with ids of the producer's own ahead of Redis's clock (quarantined: the quarantine stream, its set of
digests and its hash of entries ahead; and entries of late facts whose ids are 128 bytes long); then a service of
the same keyspace at its bound on positions quarantines SHIPMENT facts whose five ids are 128 bytes long, their
reason quoting SKU and location (the longest entry: ``quarantine_entry_longest``); then the real publisher
delivers the channel to a local webhook answering 200 (its delivered versions) and, as a second group, to one
answering 400 (its dead letters and redeliveries); then a service with ``ownership = leases`` decides Reserves
with new ids (the reservation id claims).

Each figure is ``MEMORY USAGE key SAMPLES 0`` over the key's entries or fields (summed over the shards' logs), so it
includes the key's own overhead, spread over its items; but ``watch_snapshot_per_key``: the process memory
(``tracemalloc``) a ``WatchAvailability`` snapshot's copy of the channel's values holds, per key; and
``reservation_id_claim``, a key an item: its ``MEMORY USAGE`` (``reservation_id_claim_memory_usage``) and what that
leaves out, its entry in the table of keys with a time to live and its share of both tables' slots (``MEMORY STATS``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ServiceConfig
from benchmarks.loopback_http import serving
from benchmarks.ports import held_port
from publishers import Publisher, PublisherConfig, PublisherMetrics, WebhookAdapter
from reservation import Limits

STORES = 100
SECRET = "whsec_" + "YSBiZW5jaG1hcmsga2V5IG9mIHRoaXJ0eS10d28gYnl0ZXMh"
CHANNEL = "atp:{avail}:pickup"
HOUR_MS = 3_600_000
DEAD_LETTERS = 2_000
"""Dead letters enough to measure (a stream's entries, and the redelivery hash's fields, past its listpack size)."""
Sizes = dict[str, float]
QUARANTINE = "atp:quarantine"
QUARANTINE_WRITTEN = "atp:quarantine:written:{atp:quarantine}"
QUARANTINE_AHEAD = QUARANTINE_WRITTEN + ":ahead"


def estate() -> str:
    ids = ", ".join(f'"store-{i:04d}"' for i in range(1, STORES + 1))
    return (f'[[locations]]\ntype = "store"\nids = [{ids}]\n\n[groups]\nstores = {{ type = "store" }}\n\n'
            '[[channels]]\nname = "pickup"\nsells_from = ["stores"]\nper_location = true\nthrottle_ms = 1\n'
            'rate_limit_per_s = 1000000.0\n')


def positions(n: int) -> Iterator[tuple[str, str]]:
    for i in range(n):
        yield f"sku-{i // STORES + 1:08d}", f"store-{i % STORES + 1:04d}"


def config(**overrides: Any) -> ServiceConfig:
    base: dict[str, Any] = {"port": 0, "metrics_port": -1, "shards": 4, "demo": False, "auth": "off",
                            "snapshot_every_entries": 10_000_000, "snapshot_interval_s": 86_400.0}
    return ServiceConfig(**{**base, **overrides})


async def per_item(r: aioredis.Redis, keys: list[str], count: Callable[[str], Awaitable[int]]) -> float:
    used = items = 0
    for key in keys:
        used += int(await r.memory_usage(key, samples=0) or 0)
        items += await count(key)
    return round(used / max(items, 1), 1)


async def logs_bytes(r: aioredis.Redis) -> tuple[int, int]:
    """Bytes and entries of every shard's log."""
    used = entries = 0
    async for key in r.scan_iter(match="*:log"):
        used += int(await r.memory_usage(key, samples=0) or 0)
        entries += await r.xlen(key)
    return used, entries


async def send_facts(client: AtpClient, n: int, at_ms: int, tag: str) -> list[int]:
    outcomes: list[int] = []
    places = list(positions(n))
    for i in range(0, n, 500):
        facts = [pb.Fact(event_id=f"{tag}-{i + j:08d}", source="wms", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                         quantity=50, event_time=timestamp(at_ms)) for j, (sku, loc) in enumerate(places[i:i + 500])]
        outcomes += [result.outcome for result in await client.record_events(facts)]
    return outcomes


async def stamped_ahead(r: aioredis.Redis, n: int, now: int) -> None:
    """``n`` late facts on the WMS input stream, each entry's id a producer's own an hour ahead of Redis's clock
    (``XADD <ms>-<seq>``): quarantined, each named in the hash of entries ahead of their writes."""
    async with r.pipeline(transaction=False) as pipe:
        for i, (sku, loc) in enumerate(positions(n)):
            pipe.xadd("atp:in:wms", {"event_id": f"ahead-{i:08d}", "source": "wms", "kind": "COUNT", "sku": sku,
                                     "location": loc, "quantity": "50", "event_time_ms": str(now - 26 * HOUR_MS)},
                      id=f"{now + HOUR_MS}-{i}")
        await pipe.execute()


async def longest_ids(r: aioredis.Redis, client: AtpClient, m: int, now: int) -> float:
    """Bytes a quarantine entry takes whose ids are as long as accepted (``max_id_length``, 128): ``m`` late facts."""
    used, length = int(await r.memory_usage(QUARANTINE, samples=0) or 0), await r.xlen(QUARANTINE)

    def facts(tag: str, at_ms: int) -> list[pb.Fact]:
        return [pb.Fact(event_id=f"{tag}{i:08d}".ljust(128, "e"), source="s" * 128, kind=pb.FACT_KIND_COUNT,
                        sku=f"{i:08d}".ljust(128, "k"), location="l" * 128, quantity=50, event_time=timestamp(at_ms))
                for i in range(m)]

    await client.record_events(facts("now", now))  # each SKU's shard's stream time now, whichever shard it is
    outcomes = [result.outcome for result in await client.record_events(facts("late", now - 26 * HOUR_MS))]
    assert outcomes == [pb.FACT_OUTCOME_QUARANTINED] * m, outcomes

    async def written() -> bool:
        return bool(await r.xlen(QUARANTINE) >= length + m)

    await until(written)
    return round((int(await r.memory_usage(QUARANTINE, samples=0) or 0) - used) / m, 1)


async def longest_entries(r: aioredis.Redis, url: str, estate_file: Path, m: int) -> float:
    """Bytes the longest quarantine entry takes: ``m`` SHIPMENT facts whose five ids (event id, source, SKU, location,
    reservation id) are each 128 bytes long, quarantined at the bound on positions (a service of the same keyspace
    with ``max_positions_per_shard`` 1), whose reason quotes the SKU and the location: ~1.3 KB an entry, where the
    late facts of ``longest_ids`` (four ids, no reservation id, a reason of 80 bytes) take ~730."""
    used, length = int(await r.memory_usage(QUARANTINE, samples=0) or 0), await r.xlen(QUARANTINE)
    at_ms = int(time.time() * 1000)
    facts = [pb.Fact(event_id=f"room{i:08d}".ljust(128, "e"), source="s" * 128, kind=pb.FACT_KIND_SHIPMENT,
                     sku=f"room{i:08d}".ljust(128, "k"), location="l" * 128, quantity=1, event_time=timestamp(at_ms),
                     reservation_id=f"room{i:08d}".ljust(128, "r")) for i in range(m)]
    service = AtpService(config(estate=estate_file, limits=Limits(max_positions_per_shard=1)), url)
    await service.start()
    try:
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            outcomes = [result.outcome for result in await client.record_events(facts)]
    finally:
        await service.stop(grace_s=0.1)
    assert outcomes == [pb.FACT_OUTCOME_QUARANTINED] * m, outcomes

    async def written() -> bool:
        return bool(await r.xlen(QUARANTINE) >= length + m)

    await until(written)
    return round((int(await r.memory_usage(QUARANTINE, samples=0) or 0) - used) / m, 1)


async def reserve_entries(r: aioredis.Redis, client: AtpClient, n: int, lines: int) -> float:
    """Log bytes a Reserve of ``lines`` lines adds, decided one at a time (an entry each)."""
    before, _ = await logs_bytes(r)
    places = list(positions(n * lines))
    for i in range(n):
        await client.reserve(f"res-{lines}-{i:08d}", [(sku, loc, 1) for sku, loc in places[i * lines:(i + 1) * lines]])
    after, _ = await logs_bytes(r)
    return (after - before) / n


async def until(check: Callable[[], Awaitable[bool]], limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not write what was sent in time")
        await asyncio.sleep(0.05)


async def service_keys(r: aioredis.Redis, client: AtpClient, n: int) -> Sizes:
    """The service's own keys: logs, the channel's stream and state hash, the quarantine stream and its set."""
    now = int(time.time() * 1000)
    before, entries_before = await logs_bytes(r)
    await send_facts(client, n, now, "count")
    after, entries = await logs_bytes(r)
    sizes: Sizes = {"log_bytes_per_fact": round((after - before) / n, 1),
                    "log_facts_per_entry": round(n / max(entries - entries_before, 1), 1)}
    two, four = await reserve_entries(r, client, n // 20, 2), await reserve_entries(r, client, n // 20, 4)
    sizes |= {"log_entry_reserve_2_lines": round(two, 1), "log_bytes_per_more_line": round((four - two) / 2, 1)}
    late = await send_facts(client, n, now - 26 * HOUR_MS, "late")  # past the 24 h grace window: E7, quarantined
    sizes["quarantined"] = late.count(pb.FACT_OUTCOME_QUARANTINED)
    await stamped_ahead(r, n, now)

    async def quarantined() -> bool:
        return bool(await r.hlen(QUARANTINE_AHEAD) >= n)

    await until(quarantined)

    async def published() -> bool:
        return bool(await r.hlen(f"{CHANNEL}:state") >= n)

    await until(published)
    sizes["channel_stream_entry"] = await per_item(r, [CHANNEL], r.xlen)
    sizes["channel_state_field"] = await per_item(r, [f"{CHANNEL}:state"], r.hlen)
    sizes["quarantine_entry"] = await per_item(r, [QUARANTINE], r.xlen)
    sizes["quarantine_digest"] = await per_item(r, [QUARANTINE_WRITTEN], r.zcard)
    sizes["quarantine_ahead_field"] = await per_item(r, [QUARANTINE_AHEAD], r.hlen)
    sizes["quarantine_entry_longest_ids"] = await longest_ids(r, client, max(n // 20, 1), now)
    return sizes


class Answering(BaseHTTPRequestHandler):
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(self.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def webhook(status: int) -> Iterator[str]:
    with serving(type("Answer", (Answering,), {"status": status})) as url:
        yield f"{url}/hook"


async def publish_all(r: aioredis.Redis, group: str, status: int, enough: int = 2**62) -> PublisherConfig:
    """The real publisher's group ``group`` run over the whole channel stream, against a webhook answering ``status``,
    or until it dead-lettered ``enough`` updates (each refused batch is halved down to single updates: slow)."""
    cfg = PublisherConfig(channel="pickup", group=group, block_ms=50, rate_limit_per_s=1_000_000.0, max_attempts=1,
                          backoff_base_s=0.01, backoff_max_s=0.05, read_count=500)
    with webhook(status) as url:
        adapter = WebhookAdapter(url, SECRET)
        publisher = Publisher(cfg, r, adapter, PublisherMetrics())
        task = asyncio.create_task(publisher.run())

        async def read_all() -> bool:
            assert not task.done(), task
            groups = await r.xinfo_groups(CHANNEL)
            mine = [g for g in groups if g["name"].decode() == group]
            done = bool(mine and mine[0]["lag"] == 0 and mine[0]["pending"] == 0)
            return done or await r.xlen(cfg.dead_letter_stream) >= enough

        try:
            await until(read_all)
        finally:
            publisher.stop()
            await asyncio.wait_for(task, 30)
            await adapter.close()
    return cfg


async def publisher_keys(r: aioredis.Redis) -> Sizes:
    delivered = await publish_all(r, "webhook", 200)
    # A 4xx: every update dead-lettered, its key owed (``refused``).
    refused = await publish_all(r, "refusing", 400, DEAD_LETTERS)
    return {"delivered_field": await per_item(r, [delivered.delivered_key], r.hlen),
            "publisher_dead_letter": await per_item(r, [refused.dead_letter_stream], r.xlen),
            "redeliver_field": await per_item(r, [refused.redeliver_key], r.hlen)}


async def claims(url: str, n: int) -> Sizes:
    """Reservation id claims (``<prefix>rid:{<id>}``), written by a service with ``ownership = leases``."""
    service = AtpService(config(ownership="leases", port=held_port(), input_streams=()), url)
    await service.start()
    try:
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            for i in range(n):
                await client.reserve(f"claim-{i:08d}", [("sku-00000001", "store-0001", 1)])
    finally:
        await service.stop(grace_s=0.1)
    r = aioredis.Redis.from_url(url)
    keys = [key async for key in r.scan_iter(match="atp:rid:*")]
    size = await per_item(r, keys, lambda _key: asyncio.sleep(0, 1))
    more = await keyspace_overhead_per_key(r, len(keys))
    await r.aclose()
    return {"reservation_id_claim": round(size + more, 1), "reservation_id_claim_memory_usage": size,
            "claims": len(keys)}


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _text_keys(v) for k, v in value.items()}
    return value


async def keyspace_overhead_per_key(r: aioredis.Redis, items: int) -> float:
    """What ``maxmemory`` counts of a key an item (with a time to live, as a claim) that ``MEMORY USAGE`` leaves out:
    its entry in the table of keys with a time to live and the slots of both tables, per item (``MEMORY STATS``:
    ``overhead.hashtable.main`` and ``.expires``, less the entries of the keys ``MEMORY USAGE`` counts). Counted
    by ``MEMORY USAGE`` alone, a claim was 72 bytes where Redis counts ~115 of it (1 M: ~70 MB for ~115)."""
    stats = _text_keys(await r.memory_stats())
    db = stats["db.0"]
    entries = 24 * int(stats["keys.count"])  # sizeof(dictEntry) in Redis 7: key, value, next
    return (int(db["overhead.hashtable.main"]) - entries + int(db["overhead.hashtable.expires"])) / max(items, 1)


def snapshot_copy(service: AtpService) -> float:
    """Process memory a ``WatchAvailability`` snapshot of the channel holds until its last chunk is sent, per key:
    the desk's copy of its published values (``ChannelDesk.snapshot``), taken as the watch takes it."""
    assert service.channels is not None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _version, items = service.channels.snapshot("pickup")
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    return round(held / max(len(items), 1), 1)


async def measure(n: int, tmp: Path) -> Sizes:
    (tmp / "estate.toml").write_text(estate())
    with EmbeddedRedis(tmp / "redis") as server:
        r = aioredis.Redis.from_url(server.url)
        service = AtpService(config(estate=tmp / "estate.toml"), server.url)
        await service.start()
        try:
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                sizes = await service_keys(r, client, n)
            sizes["watch_snapshot_per_key"] = snapshot_copy(service)
        finally:
            await service.stop(grace_s=0.1)
        sizes["quarantine_entry_longest"] = await longest_entries(r, server.url, tmp / "estate.toml", max(n // 20, 50))
        sizes |= await publisher_keys(r)
        await r.flushall()
        await r.aclose()
        sizes |= await claims(server.url, max(n // 20, 1))
        return {"positions": n, **sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(measure(args.positions, Path(tmp)))))


if __name__ == "__main__":
    main()
