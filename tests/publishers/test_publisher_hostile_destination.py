"""A destination that fails in every way at once (a connection closed mid-answer, 429 with Retry-After,
5xx), and a publisher stopped with a request in flight: retries bounded, dead letters with their reason,
one value per version, never an older version after a newer one, nothing lost across the stop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis.asyncio as aioredis

from publishers import Publisher, PublisherMetrics, WebhookAdapter
from publishers._http import HttpSettings
from tests.publishers.test_publisher import SECRET, config, pending, publish, update
from tests.waiting import until

DLQ = "atp:{avail}:web:dlq:webhook"
DELIVERED = "atp:{avail}:web:delivered:webhook"


class Hostile:
    """Per ``webhook-id``: the first try is answered 200 with its body cut (connection closed mid-answer,
    after the receiver applied it), the second 429 Retry-After 0, the third 500, then 200. A batch with
    the SKU ``poison`` is always answered 500. ``gate``: a request for ``gated_sku`` waits on it."""

    def __init__(self, gated_sku: str = "") -> None:
        self.lock, self.tries = threading.Lock(), dict[str, int]()
        self.applied: list[dict[str, Any]] = []  # every update the receiver took, in order
        self.requests = 0
        self.gated_sku, self.gate, self.gated = gated_sku, threading.Event(), threading.Event()
        self.plain = False

    def answer(self, headers: dict[str, str], body: bytes) -> str:
        updates = json.loads(body)["updates"]
        skus = {u["sku"] for u in updates}
        if self.gated_sku in skus:
            self.gated.set()
            self.gate.wait(30)
        with self.lock:
            self.requests += 1
            if "poison" in skus:
                return "500"
            n = self.tries[headers["webhook-id"]] = self.tries.get(headers["webhook-id"], 0) + 1
            if self.plain or n >= 4 or self.gated_sku in skus:
                self.applied.extend(updates)
                return "200"
            if n == 1:
                self.applied.extend(updates)
                return "cut"
            return "429" if n == 2 else "500"


@contextmanager
def hostile_server(receiver: Hostile) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            what = receiver.answer(dict(self.headers.items()), body)
            if what == "cut":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"0123456789")
                self.close_connection = True
                return
            self.send_response(int(what))
            self.send_header("Content-Length", "0")
            if what == "429":
                self.send_header("Retry-After", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/inventory"
    finally:
        receiver.gate.set()
        server.shutdown()
        server.server_close()


def one_value_per_version_in_order(applied: list[dict[str, Any]]) -> None:
    values: dict[int, tuple[str, int]] = {}
    newest: dict[str, int] = {}
    for u in applied:
        assert values.setdefault(u["version"], (u["sku"], u["quantity"])) == (u["sku"], u["quantity"]), u
        assert u["version"] >= newest.get(u["sku"], 0), f"an older version of {u['sku']} after a newer one"
        newest[u["sku"]] = u["version"]


async def test_a_destination_failing_every_way_gets_each_key_newest_once_settled_and_poison_dead_lettered(
        client: aioredis.Redis) -> None:
    receiver = Hostile()
    await publish(client, [update("a", 5, 1), update("poison", 3, 2), update("b", 0, 3)])
    with hostile_server(receiver) as url:
        publisher = Publisher(config(delivery_batch=1, max_attempts=4), client,
                              WebhookAdapter(url, SECRET, HttpSettings(timeout_s=5)), PublisherMetrics())
        task = asyncio.create_task(publisher.run())
        try:
            await until(lambda: _settled(client, 1), "the first read settled")
            await publish(client, [update("a", 4, 4), update("b", 2, 5)])
            await until(lambda: _at(client, {"a\t": 4, "b\t": 5}), "the newer versions delivered")
        finally:
            publisher.stop()
            await asyncio.wait_for(task, 10)
            await publisher.adapter.close()
    one_value_per_version_in_order(receiver.applied)
    assert {u["sku"]: u["version"] for u in receiver.applied} == {"a": 4, "b": 5}
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in await client.xrange(DLQ)]
    assert [(d["sku"], d["version"], d["attempts"]) for d in dead] == [("poison", "2", "4")]
    assert dead[0]["reason"].startswith("HTTP 500")
    assert receiver.tries and all(n == 4 for n in receiver.tries.values())  # cut, 429 (waited), 500, 200
    assert await pending(client) == 0


async def _settled(client: aioredis.Redis, xlen_dlq: int) -> bool:
    if not await client.exists(DELIVERED):  # the group is made by the publisher's start
        return False
    return await pending(client) == 0 and await client.xlen(DLQ) == xlen_dlq and await client.hlen(DELIVERED) == 2


async def _at(client: aioredis.Redis, want: dict[str, int]) -> bool:
    got = {k.decode(): int(v) for k, v in (await client.hgetall(DELIVERED)).items()}
    return got == want and await pending(client) == 0  # the group exists once a version is recorded


async def test_a_stop_with_a_request_in_flight_keeps_what_was_delivered_and_delivers_the_rest_at_restart(
        client: aioredis.Redis) -> None:
    receiver = Hostile(gated_sku="b")
    receiver.plain = True
    await publish(client, [update("a", 5, 1), update("b", 3, 2), update("c", 1, 3)])
    with hostile_server(receiver) as url:
        first = Publisher(config(delivery_batch=1), client, WebhookAdapter(url, SECRET), PublisherMetrics())
        task = asyncio.create_task(first.run())
        await until(receiver.gated.is_set, "the request for b in flight")
        first.stop()  # SIGTERM: the request for b is cut off client-side
        await asyncio.wait_for(task, 10)
        await first.adapter.close()
        receiver.gate.set()  # the receiver applies b all the same (it got the whole request)
        await until(lambda: any(u["sku"] == "b" for u in receiver.applied), "the receiver applying b")
        recorded = {k.decode(): int(v) for k, v in (await client.hgetall(DELIVERED)).items()}
        assert recorded == {"a\t": 1}, recorded  # what was delivered before the stop, recorded
        assert await pending(client) == 3  # nothing acknowledged: the read stays pending
        await publish(client, [update("c", 0, 4)])  # a newer value while stopped

        receiver.gated_sku = ""
        second = Publisher(config(delivery_batch=1), client, WebhookAdapter(url, SECRET), PublisherMetrics())
        run = asyncio.create_task(second.run())
        try:
            await until(lambda: _at(client, {"a\t": 1, "b\t": 2, "c\t": 4}), "every key at its newest")
        finally:
            second.stop()
            await asyncio.wait_for(run, 10)
            await second.adapter.close()
    one_value_per_version_in_order(receiver.applied)
    assert [u["version"] for u in receiver.applied if u["sku"] == "a"] == [1]  # not sent again
    assert receiver.applied[-1]["sku"] in {"b", "c"} and {u["sku"]: u["version"] for u in receiver.applied} == {
        "a": 1, "b": 2, "c": 4}


async def test_a_key_dead_lettered_again_at_redeliver_max_keys_owes_no_resync_of_every_key(
        client: aioredis.Redis) -> None:
    """During a long outage the keys owed reach ``redeliver_max_keys``; a newer value of a key already
    owed, dead-lettered too, adds no key to remember. It was counted as one more key all the same: the
    whole state hash was owed a resync (every key of the channel sent again) for nothing."""
    receiver = Hostile()
    await publish(client, [update("poison", 5, 1), update("poison", 3, 2, "s1")])  # two keys, always refused
    with hostile_server(receiver) as url:
        publisher = Publisher(config(max_attempts=1, redeliver_max_keys=2), client, WebhookAdapter(url, SECRET),
                              PublisherMetrics())
        task = asyncio.create_task(publisher.run())
        try:
            await until(lambda: _dead(client, 2), "both keys dead-lettered")
            await publish(client, [update("poison", 4, 3)])  # the first key again, newer: still two keys owed
            await until(lambda: _dead(client, 3), "the newer value dead-lettered")
        finally:
            publisher.stop()
            await asyncio.wait_for(task, 10)
            await publisher.adapter.close()
    owed = {k.decode(): v.decode() for k, v in (await client.hgetall("atp:{avail}:web:redeliver:webhook")).items()}
    assert owed == {"poison\t": "3 retry", "poison\ts1": "2 retry"}
    assert not await client.exists("atp:{avail}:web:redeliver-all:webhook"), "a resync of every key owed for nothing"


async def _dead(client: aioredis.Redis, n: int) -> bool:
    return await client.xlen(DLQ) == n and await pending(client) == 0
