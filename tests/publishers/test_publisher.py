"""atp-publisher against a real Redis stream and a real local HTTP server that fails on purpose."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook, WebhookVerificationError

from atp_service.storage.channel_wire import to_fields
from atp_service.storage.nodes import connect_any
from publishers import JsonlAdapter, Publisher, PublisherConfig, PublisherMetrics, WebhookAdapter
from reservation import ChannelUpdate, StockStatus
from tests.waiting import until

SECRET = "whsec_" + base64.b64encode(b"a test key of thirty-two bytes!!").decode()


class Receiver:
    """A webhook endpoint: fails the first ``fail_first`` requests (or all) with 503, verifies the
    rest as a receiver does (Standard Webhooks) and records them with their ``webhook-id``."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.fail_first, self.always_fail = fail_first, always_fail
        self.attempts = 0
        self.ids: list[str] = []
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self.lock:
            self.attempts += 1
            self.ids.append(headers.get("webhook-id", ""))
            if self.always_fail or self.attempts <= self.fail_first:
                return 503
            try:
                payload = Webhook(SECRET).verify(body, headers)
            except WebhookVerificationError:
                self.bad_signatures += 1
                return 401
            self.accepted.extend(payload["updates"])
            return 200


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(receiver: Receiver) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.handle(body, dict(self.headers.items()))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/inventory"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def update(sku: str, quantity: int, version: int, location: str = "") -> ChannelUpdate:
    status = StockStatus.OUT_OF_STOCK if quantity == 0 else StockStatus.IN_STOCK
    return ChannelUpdate("web", sku, location, quantity, None, status, version, 1000 + version, 0, 2000 + version)


async def publish(client: aioredis.Redis, updates: list[ChannelUpdate]) -> None:
    for u in updates:
        await client.xadd("atp:{avail}:web", to_fields(u), id=f"{u.version}-0")  # type: ignore[arg-type]


def config(**overrides: Any) -> PublisherConfig:
    base: dict[str, Any] = {"channel": "web", "group": "webhook", "block_ms": 50, "rate_limit_per_s": 10_000,
                            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 5, "delivery_batch": 3}
    return PublisherConfig(**{**base, **overrides})


async def run_until(publisher: Publisher, done: Any, timeout_s: float = 10.0) -> None:
    task = asyncio.create_task(publisher.run())
    deadline = time.monotonic() + timeout_s
    try:
        while not await done():
            assert time.monotonic() < deadline, "publisher did not get there in time"
            assert not task.done(), task.exception() if task.done() else ""
            await asyncio.sleep(0.02)
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)


async def pending(client: aioredis.Redis) -> int:
    info: Any = await client.xpending("atp:{avail}:web", "webhook")
    return int(info["pending"])


async def test_webhook_retried_delivered_once_per_version_in_order_and_signed(
        client: aioredis.Redis, receiver_factory: Any) -> None:
    receiver = Receiver(fail_first=3)
    url = receiver_factory(receiver)
    updates = [update("a", 5, 1), update("b", 7, 2), update("a", 4, 3), update("c", 1, 4), update("a", 0, 5),
               update("b", 6, 6), update("d", 9, 7, "store-1")]
    await publish(client, updates)
    publisher = Publisher(config(), client, WebhookAdapter(url, SECRET), PublisherMetrics())

    async def settled() -> bool:
        return len(receiver.accepted) >= 4 and await pending(client) == 0

    await run_until(publisher, settled)
    await publisher.adapter.close()
    got = [(u["sku"], u["quantity"], u["version"]) for u in receiver.accepted]
    # "a" 1 and 3 were superseded by 5 before delivery, "b" 2 by 6: only the newest version of each goes
    # out, the stock-out first
    assert got == [("a", 0, 5), ("c", 1, 4), ("b", 6, 6), ("d", 9, 7)]
    assert receiver.bad_signatures == 0 and receiver.attempts == 3 + 2  # two chunks of 3, 3 failures first
    # Every try of one batch carries the same webhook-id (a receiver drops a repeat by it); another batch not.
    assert receiver.ids[:4] == [receiver.ids[0]] * 4 and receiver.ids[4] != receiver.ids[0]
    delivered = await client.hgetall("atp:{avail}:web:delivered:webhook")
    assert {k.decode(): int(v) for k, v in delivered.items()} == {"a\t": 5, "b\t": 6, "c\t": 4, "d\tstore-1": 7}

    # Idempotence by version: re-reading everything (as after a lost acknowledgement) delivers nothing again,
    # and an older version published late is never delivered after a newer one.
    await client.xgroup_setid("atp:{avail}:web", "webhook", id="0")
    await client.xadd("atp:{avail}:web", to_fields(update("zz", 3, 8)), id="8-0")  # type: ignore[arg-type]
    again = Publisher(config(), client, WebhookAdapter(url, SECRET), PublisherMetrics())

    async def caught_up() -> bool:
        return any(u["sku"] == "zz" for u in receiver.accepted) and await pending(client) == 0

    await run_until(again, caught_up)
    await again.adapter.close()
    assert [(u["sku"], u["version"]) for u in receiver.accepted[4:]] == [("zz", 8)]


async def test_webhook_dead_lettered_after_max_attempts(client: aioredis.Redis, receiver_factory: Any) -> None:
    receiver = Receiver(always_fail=True)
    url = receiver_factory(receiver)
    await publish(client, [update("a", 5, 1), update("b", 0, 2)])
    metrics = PublisherMetrics()
    publisher = Publisher(config(max_attempts=3), client, WebhookAdapter(url, SECRET), metrics)

    async def settled() -> bool:
        return await client.xlen("atp:{avail}:web:dlq:webhook") == 2 and await pending(client) == 0

    await run_until(publisher, settled)
    await publisher.adapter.close()
    # The stock-out's request and the change's (C2: not one): 3 tries, then one (the destination is down: each
    # other request of the read is tried once, not max_attempts times with its backoff)
    assert receiver.attempts == 3 + 1
    dead = await client.xrange("atp:{avail}:web:dlq:webhook")
    fields = [{k.decode(): v.decode() for k, v in f.items()} for _, f in dead]  # the stock-out "b" first
    assert [(f["sku"], f["version"], f["attempts"]) for f in fields] == [("b", "2", "3"), ("a", "1", "1")]
    assert fields[0]["reason"].startswith("HTTP 503")
    assert metrics.dead_lettered.labels("web")._value.get() == 2
    # Still failing after the last try: counted retried at each try, the last one too, never failed (refused for good).
    outcomes = {o: metrics.deliveries.labels("web", "webhook", o)._value.get() for o in ("retried", "failed")}
    assert outcomes == {"retried": 3 + 1, "failed": 0}
    assert not await client.hexists("atp:{avail}:web:delivered:webhook", "a\t")


async def test_rate_limit_paces_deliveries(client: aioredis.Redis, tmp_path: Path) -> None:
    await publish(client, [update(f"sku-{n}", n + 1, n + 1) for n in range(100)])
    clock = {"ms": 0}
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["ms"] += int(seconds * 1000) + 1
        await asyncio.sleep(0)

    out = tmp_path / "feed.jsonl"
    publisher = Publisher(config(rate_limit_per_s=50, burst=5, delivery_batch=10), client, JsonlAdapter(out),
                          PublisherMetrics(), sleep=fake_sleep, now_ms=lambda: clock["ms"])

    async def settled() -> bool:
        return out.exists() and len(out.read_text().splitlines()) == 100

    await run_until(publisher, settled)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [u["version"] for u in lines] == list(range(1, 101))
    assert clock["ms"] >= (100 - 5) / 50 * 1000  # 95 updates beyond the burst at 50/s: about 1.9 s paced


async def test_a_publisher_delivers_from_a_redis_cluster(cluster_url: str, tmp_path: Path) -> None:
    """Every key a publisher touches (the stream, its delivered hash, its dead letters) shares the
    channel feeds' hash tag, so its transactions run on one cluster node."""
    cluster = connect_any(cluster_url, 5.0, cluster=True)
    try:
        await publish(cluster, [update(f"sku-{n}", n, n + 1) for n in range(5)])
        out = tmp_path / "feed.jsonl"
        publisher = Publisher(config(group="jsonl"), cluster, JsonlAdapter(out), PublisherMetrics())

        async def settled() -> bool:  # delivered, then recorded: the file is written before the settle script runs
            return len(await cluster.hgetall("atp:{avail}:web:delivered:jsonl")) == 5

        await run_until(publisher, settled, timeout_s=30.0)  # a guard: six nodes on a busy machine
        assert [json.loads(line)["version"] for line in out.read_text().splitlines()] == [1, 2, 3, 4, 5]
    finally:
        await cluster.aclose()


async def test_a_stop_during_retries_leaves_the_batch_pending_not_dead_lettered(
        client: aioredis.Redis, receiver_factory: Any) -> None:
    """A stop signal while the destination is down ends the backoff at once; the batch is neither
    retried to its last attempt nor dead-lettered, and the next start delivers it."""
    down = Receiver(always_fail=True)
    await publish(client, [update("a", 5, 1), update("b", 3, 2), update("c", 1, 3)])
    stopping = Publisher(config(delivery_batch=2, max_attempts=8, backoff_base_s=30, backoff_max_s=60), client,
                         WebhookAdapter(receiver_factory(down), SECRET), PublisherMetrics())
    task = asyncio.create_task(stopping.run())
    # The first attempt refused: the publisher now waits out its backoff (15 to 30 s).
    await until(lambda: bool(down.attempts) or task.done(), "the publisher trying the destination", 30)
    assert not task.done(), "the publisher ended before trying the destination"
    stopping.stop()
    # Bounded below the shortest backoff (15 s): ended, the stop did not wait for it.
    await asyncio.wait_for(task, 10)
    await stopping.adapter.close()
    assert down.attempts == 1 and await client.xlen("atp:{avail}:web:dlq:webhook") == 0
    assert await pending(client) == 3

    up = Receiver()
    restarted = Publisher(config(), client, WebhookAdapter(receiver_factory(up), SECRET), PublisherMetrics())

    async def settled() -> bool:
        return await pending(client) == 0

    await run_until(restarted, settled)
    await restarted.adapter.close()
    assert sorted(u["sku"] for u in up.accepted) == ["a", "b", "c"]


async def test_a_stock_out_behind_a_backlog_goes_out_in_the_first_request(client: aioredis.Redis,
                                                                          tmp_path: Path) -> None:
    """A publisher behind (a destination's quota below the change rate) delivered a read in version
    order: a stock-out behind 29 ordinary changes waited for all of them and their tokens, and the
    channel kept selling what was gone. Each key has one update per read, so stock-outs go first."""
    await publish(client, [update(f"sku-{n}", n + 1, n + 1) for n in range(29)] + [update("gone", 0, 30)])
    clock = {"ms": 0}

    async def fake_sleep(seconds: float) -> None:
        clock["ms"] += int(seconds * 1000) + 1
        await asyncio.sleep(0)

    out = tmp_path / "feed.jsonl"
    publisher = Publisher(config(rate_limit_per_s=10, burst=10, delivery_batch=10), client, JsonlAdapter(out),
                          PublisherMetrics(), sleep=fake_sleep, now_ms=lambda: clock["ms"])

    async def settled() -> bool:
        return out.exists() and len(out.read_text().splitlines()) == 30

    await run_until(publisher, settled)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["sku"] == "gone", [u["sku"] for u in lines[:10]]
    assert [u["version"] for u in lines[1:]] == list(range(1, 30))  # the rest in version order


class _Timed:
    """An adapter that notes the (fake) time each batch went out, and what it held."""

    name = "timed"

    def __init__(self, clock: dict[str, int]) -> None:
        self.clock = clock
        self.sent: list[tuple[int, list[ChannelUpdate]]] = []

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        self.sent.append((self.clock["ms"], list(updates)))

    async def close(self) -> None:
        return None


async def _delivered_at_defaults(client: aioredis.Redis, count: int) -> tuple[_Timed, dict[str, int]]:
    """What was published delivered at ``--rate`` 10 with a burst of 10 and ``--batch`` 100 (a fake clock
    the publisher's waits move on): the adapter that noted each request, and the clock at the end."""
    clock = {"ms": 0}

    async def fake_sleep(seconds: float) -> None:
        clock["ms"] += int(seconds * 1000) + 1
        await asyncio.sleep(0)

    adapter = _Timed(clock)
    publisher = Publisher(config(rate_limit_per_s=10, burst=10, delivery_batch=100), client, adapter,
                          PublisherMetrics(), sleep=fake_sleep, now_ms=lambda: clock["ms"])

    async def settled() -> bool:
        return sum(len(updates) for _, updates in adapter.sent) == count

    await run_until(publisher, settled)
    return adapter, clock


async def test_a_stock_out_waits_for_no_token_of_the_changes_read_with_it(client: aioredis.Redis) -> None:
    """With the defaults (``--batch`` 100, ``--rate`` 10 with a burst of 10) a stock-out shared its request
    with the ordinary changes read with it, and the request went out only once the rate limit had a token
    for each of them: 9 s with the channel still selling what was gone (C2). Stock-outs go in requests of
    their own, first: only their own tokens are waited for."""
    await publish(client, [update(f"sku-{n}", n + 1, n + 1) for n in range(29)] + [update("gone", 0, 30)])
    adapter, clock = await _delivered_at_defaults(client, 30)
    at, first = adapter.sent[0]
    assert [u.sku for u in first][:1] == ["gone"]
    assert at == 0, f"the stock-out waited {at} ms for the tokens of {len(first) - 1} ordinary changes"
    assert [u.version for _, updates in adapter.sent for u in updates] == [30, *range(1, 30)]  # the rest in order
    assert clock["ms"] >= (30 - 10) / 10 * 1000  # the rate limit still holds for all of them


async def test_many_stock_outs_go_a_full_bucket_at_a_time(client: aioredis.Redis) -> None:
    """A read of 30 stock-outs (a store closing) went in one request that waited for a token of each:
    3 s at 10/s with the channel selling all 30 meanwhile. Stock-out requests carry at most a full
    bucket: the first 10 go at once, the others as their tokens come (C2), the rate limit kept."""
    await publish(client, [update(f"gone-{n}", 0, n + 1) for n in range(30)])
    adapter, _ = await _delivered_at_defaults(client, 30)
    assert [len(u) for _, u in adapter.sent] == [10, 10, 10]
    assert adapter.sent[0][0] == 0, f"the first stock-outs waited {adapter.sent[0][0]} ms"
    assert [u.version for _, updates in adapter.sent for u in updates] == list(range(1, 31))
    assert adapter.sent[-1][0] >= (30 - 10) / 10 * 1000  # the rate limit still holds
