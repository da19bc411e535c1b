"""A publisher under faults of its own: cancelled while a delivery waits, its consumer group lost
while it runs, a destination that trickles its answer or sends too much of one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from publishers import DeliveryError, JsonlAdapter, Publisher, PublisherMetrics, WebhookAdapter
from publishers._http import Http, HttpSettings
from reservation import ChannelUpdate, StockStatus
from tests.conftest import spawned
from tests.publishers.http_helpers import serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, update
from tests.waiting import until

STREAM = "atp:{avail}:web"


async def test_a_cancelled_publisher_leaves_no_delivery_behind(client: aioredis.Redis) -> None:
    """Cancelled while its delivery waited out a Retry-After, a publisher left that delivery running
    alone: it sent its older batch after a successor had delivered a newer value, which then lost."""
    lock, seen, accepted = threading.Lock(), [0], []

    def handle(path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with lock:
            seen[0] += 1
            if seen[0] == 1:
                return 429, {"Retry-After": "1"}, b""  # the first try is asked to wait
            accepted.extend(json.loads(body)["updates"])
            return 200, {}, b""

    entered, release = asyncio.Event(), asyncio.Event()
    waiting: list[asyncio.Task[Any]] = []

    async def gated_sleep(seconds: float) -> None:  # the Retry-After wait, ended when the test says
        waiting.append(asyncio.current_task())  # type: ignore[arg-type]
        entered.set()
        await release.wait()

    with serve(handle) as base:
        url = base + "/inventory"
        await publish(client, [update("a", 5, 1)])
        first = Publisher(config(), client, WebhookAdapter(url, SECRET, sleep=gated_sleep), PublisherMetrics())
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(entered.wait(), 10)
        task.cancel()  # e.g. the embedding application shuts the publisher's task down
        with pytest.raises(asyncio.CancelledError):
            await task

        await publish(client, [update("a", 0, 2)])  # a stock-out, newer
        second = Publisher(config(), client, WebhookAdapter(url, SECRET), PublisherMetrics())
        run = asyncio.create_task(second.run())

        async def caught_up() -> bool:
            return any(u["version"] == 2 for u in accepted) and await pending(client) == 0

        for _ in range(500):
            if await caught_up():
                break
            await asyncio.sleep(0.02)
        assert await caught_up(), "the second publisher did not deliver version 2"
        second.stop()
        await asyncio.wait_for(run, 5)
        await second.adapter.close()

        release.set()  # whatever of the cancelled publisher still runs may go on now
        await asyncio.wait(waiting, timeout=10)
        await until(lambda: all(t.done() for t in waiting), "the cancelled publisher's delivery ended")
        await first.adapter.close()
    last = [u for u in accepted if u["sku"] == "a"][-1]
    assert (last["version"], last["quantity"]) == (2, 0), f"destination ends at {last} after version 2 (0)"


async def test_a_publisher_delivers_again_after_its_group_was_lost(client: aioredis.Redis, tmp_path: Path) -> None:
    """The channel stream deleted (and written again) while the publisher runs: every read failed
    NOGROUP, taken for "Redis unavailable" and retried for ever."""
    out = tmp_path / "feed.jsonl"

    def versions() -> list[int]:
        return [json.loads(line)["version"] for line in out.read_text().splitlines()] if out.exists() else []

    await publish(client, [update("a", 5, 1)])
    publisher = Publisher(config(group="jsonl", redis_retry_s=0.05), client, JsonlAdapter(out), PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(500):
            if versions() == [1]:
                break
            await asyncio.sleep(0.02)
        assert versions() == [1]
        await client.delete(STREAM)  # gone with its group; the desk's next write makes the stream again
        await publish(client, [update("a", 0, 2)])
        for _ in range(500):  # bounded: 10 s, 200 read retries at 0.05 s
            if 2 in versions():
                break
            assert not task.done(), task
            await asyncio.sleep(0.02)
        assert 2 in versions(), "version 2 (a stock-out) never delivered: the publisher retries NOGROUP for ever"
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)


async def test_a_trickled_answer_cannot_hold_a_delivery_past_its_timeout() -> None:
    """httpx's timeout bounds each socket read, not the request: a destination sending its answer a
    byte at a time held the delivery as long as it liked."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            while not stop.is_set():  # one byte per 50 ms: 5,000 s for the whole body
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    adapter = WebhookAdapter(f"http://127.0.0.1:{server.server_address[1]}/inventory", SECRET,
                             HttpSettings(timeout_s=2.0))
    try:
        # 10 s: five times the request's bound; the bound itself is what ends it.
        with pytest.raises(DeliveryError, match=r"no whole answer within timeout_s=2s"):
            await asyncio.wait_for(adapter.deliver("web", [update("a", 0, 1)]), 10)
    finally:
        stop.set()
        await adapter.close()
        server.shutdown()
        server.server_close()


async def test_an_answer_over_its_bound_is_cut_where_only_its_status_counts() -> None:
    """A webhook's 2xx means delivered whatever its page says, and a refusal's page only gives its
    reason: a page over max_answer_bytes failed the try, so a batch the receiver took was resent and
    finally dead-lettered, and a 400 with a large page was retried as if the answer was lost."""
    bounded = HttpSettings(max_answer_bytes=1000)
    with (serve(lambda *_: (200, {}, b"<html>" + b"x" * 5000)) as taken_url,
          serve(lambda *_: (400, {}, b"bad " + b"x" * 5000)) as refused_url,
          serve(lambda *_: (500, {}, b"not now")) as small_url):
        taken, refused = WebhookAdapter(taken_url, SECRET, bounded), WebhookAdapter(refused_url, SECRET, bounded)
        small = WebhookAdapter(small_url, SECRET, bounded)
        try:
            assert await taken.deliver("web", [update("a", 0, 1)]) == []
            with pytest.raises(DeliveryError, match=r"^HTTP 400: bad x{196}$") as told:
                await refused.deliver("web", [update("a", 0, 1)])
            assert not told.value.retryable
            with pytest.raises(DeliveryError, match=r"^HTTP 500: not now$") as told:
                await small.deliver("web", [update("a", 0, 1)])
            assert told.value.retryable
        finally:
            for adapter in (taken, refused, small):
                await adapter.close()


async def test_a_2xx_whose_body_is_the_answer_fails_the_try_past_its_bound() -> None:
    """Where a 2xx's body says what happened (Shopify's GraphQL answer), a cut one cannot be read."""
    http = Http(HttpSettings(max_answer_bytes=1000))
    with serve(lambda *_: (200, {}, b"{" + b" " * 5000 + b"}")) as url:
        try:
            with pytest.raises(DeliveryError, match=r"^HTTP 200: an answer over max_answer_bytes=1000$"):
                await http.post(url, b"{}", dict)
        finally:
            await http.close()


class FailsWhenTold:
    """A destination whose first delivery fails when the test says; later ones never end."""

    name = "gated"

    def __init__(self) -> None:
        self.calls = 0
        self.entered, self.fail = asyncio.Event(), asyncio.Event()

    async def deliver(self, channel: str, updates: list[Any]) -> None:
        self.calls += 1
        self.entered.set()
        if self.calls == 1:
            await self.fail.wait()
            raise DeliveryError("HTTP 503: not now")  # retryable
        await asyncio.Event().wait()  # a later try: never ends

    async def close(self) -> None:
        pass


async def test_a_cancellation_arriving_as_the_delivery_fails_is_not_swallowed(client: aioredis.Redis) -> None:
    """The delivery failing in the turn the publisher is cancelled: the failure must not take the
    cancellation's place (the publisher would retry on, cancelled)."""
    await publish(client, [update("a", 5, 1)])
    adapter = FailsWhenTold()
    publisher = Publisher(config(backoff_base_s=0.001, backoff_max_s=0.001), client, adapter, PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(adapter.entered.wait(), 10)
    adapter.fail.set()  # the delivery fails in the next loop turn ...
    task.cancel()  # ... the turn in which the publisher's cancellation arrives
    done, _ = await asyncio.wait({task}, timeout=5)
    try:
        assert task in done, f"the cancelled publisher still runs ({adapter.calls} deliveries tried)"
        assert task.cancelled()
        assert adapter.calls == 1
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)


async def test_a_stuck_file_destination_neither_freezes_the_publisher_nor_keeps_it_from_stopping(
        client: aioredis.Redis, redis_url: str, tmp_path: Path) -> None:
    """The jsonl file is a FIFO nobody reads: opening it to append never returns (a stuck disk, a
    hung NFS mount). The write ran on the event loop: the lease was not renewed (a standby would take
    over and write newer levels, this write landing after them) and SIGTERM was never answered. Now
    the write fails its try after --request-timeout, the lease is kept, and a stop ends the process."""
    fifo, log = tmp_path / "feed.jsonl", tmp_path / "publisher.log"
    os.mkfifo(fifo)
    process = _start_jsonl_publisher(fifo, redis_url, log)
    try:
        await until(lambda: client.exists(LEASE_KEY), "the publisher takes the lease")
        await publish(client, [update("a", 0, 1)])
        await until(lambda: "has not ended (a stuck disk?)" in log.read_text(), "the stuck write fails its tries")
        renewed = await client.pttl(LEASE_KEY)
        await until(lambda: _renewed_since(client, renewed), "the lease renewed while the write is stuck")
        process.send_signal(signal.SIGTERM)
        await until(lambda: process.poll() is not None, "the publisher stops when asked")
        assert process.returncode == 0, log.read_text()[-2000:]
        assert not await client.exists(LEASE_KEY), "the lease released for a standby to take at once"
    finally:
        process.kill()
        process.wait(10)


LEASE_KEY = "atp:{avail}:web:lease:jsonl"


def _start_jsonl_publisher(path: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    """``atp-publisher`` of channel web, group jsonl, appending to ``path``, with a 1 s lease."""
    flags = ["--channel", "web", "--adapter", "jsonl", "--file", str(path), "--redis-url", redis_url,
             "--group", "jsonl", "--lease", "1", "--request-timeout", "0.3", "--rate", "10000",
             "--backoff-base", "0.01", "--backoff-max", "0.05", "--metrics-port", "-1", "--log-format", "json"]
    with log.open("wb") as out:
        return spawned(subprocess.Popen([sys.executable, "-m", "publishers.cli", *flags], stdout=out, stderr=out))


async def _renewed_since(client: aioredis.Redis, ttl_ms: int) -> bool:
    """The lease's time to live went up since it was ``ttl_ms``: renewed (it only falls otherwise)."""
    return int(await client.pttl(LEASE_KEY)) > ttl_ms


@pytest.mark.parametrize("left", [b'{"channel":"web","sku":"A","quan', b""])
async def test_a_jsonl_line_torn_by_an_earlier_process_never_swallows_the_next_update(
        tmp_path: Path, left: bytes) -> None:
    """A publisher killed mid-write (kill -9, power lost, a stuck write cut off at its exit) leaves
    half a line; the next one appended its first update onto it, so a reader dropped both the torn
    line and that update — a stock-out lost downstream. The next write starts on a line of its own."""
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b'{"sku":"before"}\n' + left)
    adapter = JsonlAdapter(path)
    await adapter.deliver("web", [ChannelUpdate("web", "A", "DC", 0, 4, StockStatus.OUT_OF_STOCK, 7, 1, 1)])
    *kept, last, end = path.read_bytes().split(b"\n")
    assert end == b"" and kept == [b'{"sku":"before"}', *([left] if left else [])]  # the torn one alone
    update_line = json.loads(last)
    assert (update_line["sku"], update_line["quantity"], update_line["version"]) == ("A", 0, 7)


async def test_reads_the_replicas_do_not_confirm_are_said_once_a_minute_not_as_redis_unavailable(
        client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--wait-replicas 1`` on a Redis without replicas: every read is held back and read again after
    ``redis_retry_s``. Each try wrote two WARNING lines, the second "Redis unavailable" (Redis answered;
    its replicas did not confirm): one line now, at once, then at most one a minute carrying how many
    were left out."""
    await publish(client, [update("a", 5, 1)])
    now, tries = [0.0], [0]
    publisher: Publisher

    async def retry_wait(_seconds: float) -> None:  # each wait is one read held back; the clock the test's
        tries[0] += 1
        if tries[0] == 5:
            now[0] += 61.0
        if tries[0] == 8:
            publisher.stop()
        await asyncio.sleep(0)

    publisher = Publisher(config(wait_replicas=1, wait_timeout_ms=10), client, JsonlAdapter(tmp_path / "out.jsonl"),
                          PublisherMetrics(), sleep=retry_wait)
    publisher.replicas.clock = lambda: now[0]
    with caplog.at_level(logging.INFO, logger="publishers"):
        await asyncio.wait_for(publisher.run(), 30)
    assert tries[0] == 8
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r.getMessage() for r in said if "unavailable" in r.getMessage()]
    assert [(getattr(r, "event", None), getattr(r, "left_out", 0)) for r in said] == [
        ("publisher_not_replicated", 0), ("publisher_not_replicated", 4)]
    assert "replicas" in said[0].getMessage() and "Redis unavailable" not in said[0].getMessage()
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()  # nothing delivered
