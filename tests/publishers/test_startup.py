"""``atp-publisher`` as a process: it follows the service's key prefix, waits for a Redis that is not
up yet (bounded, one log line per try, no traceback), and serves metrics on ``--metrics-host``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from atp_service import EmbeddedRedis
from atp_service.storage.channel_wire import to_fields
from publishers import (
    JsonlAdapter,
    Publisher,
    PublisherConfig,
    PublisherMetrics,
    RedisUnavailable,
    RedisWait,
    wait_for_redis,
)
from publishers.cli import build_parser, main, make_config, metrics_host_of
from reservation import ChannelUpdate, StockStatus
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory, spawned
from tests.ports import held_port
from tests.publishers.http_helpers import Clock

DEADLINE_S = 30.0
"""How long a test waits for something that should happen (a guard against hanging, not a timing)."""


def publisher(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return spawned(subprocess.Popen(
        [sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl", "--rate", "1000",
         "--file", str(tmp_path / "web.jsonl"), *args],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=(tmp_path / "publisher.log").open("wb")))


def until(done: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_publisher_follows_a_non_default_key_prefix(start_service: ServiceFactory, tmp_path: Path,
                                                            redis_url: str) -> None:
    _service, client = await start_service(estate=write_estate(tmp_path), key_prefix="shop1:")
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, 1_700_000_000_000)])
    proc = publisher(tmp_path, "--redis-url", redis_url, "--key-prefix", "shop1:", "--metrics-port", "-1")
    out, log = tmp_path / "web.jsonl", tmp_path / "publisher.log"
    recorded = redis.Redis.from_url(redis_url)
    try:
        # The line lands in the file before its fsync ends and the delivery is recorded: a stop in
        # between leaves it to be delivered again at the next start (at least once), so the test
        # waits for the record, the publisher's group living beside the prefix, not for the line.
        await asyncio.to_thread(until, lambda: recorded.hget("shop1:{avail}:web:delivered:jsonl", "sku-a\t")
                                is not None, proc, log)  # the service runs meanwhile
    finally:
        recorded.close()
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert [(u["channel"], u["sku"], u["quantity"]) for u in lines(out)][:1] == [("web", "sku-a", 36)]
    raw = aioredis.Redis.from_url(redis_url)
    try:  # the service wrote its feed under the prefix
        assert await raw.xlen("shop1:{avail}:web") >= 1 and not await raw.exists("atp:{avail}:web")
    finally:
        await raw.aclose()


def test_a_publisher_started_before_redis_waits_for_it_then_delivers(tmp_path: Path) -> None:
    port, metrics = held_port(), held_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port, password="pw-not-in-logs")
    proc = publisher(tmp_path, "--redis-url", server.url, "--redis-wait", "0", "--redis-backoff-max", "0.2",
                     "--metrics-port", str(metrics), env={"ATP_METRICS_HOST": "127.0.0.2"})
    out, log = tmp_path / "web.jsonl", tmp_path / "publisher.log"
    try:
        until(lambda: log.read_text().count("waiting for Redis at") >= 3, proc, log)
        with urllib.request.urlopen(f"http://127.0.0.2:{metrics}/metrics", timeout=5) as scraped:
            assert b"atp_publisher_deliveries_total" in scraped.read()  # served while it waits
        server.start()
        update = ChannelUpdate("web", "sku-1", "", 4, None, StockStatus.IN_STOCK, 1, 1000, 0, 2000)
        with redis.Redis.from_url(server.url) as client:
            client.xadd("atp:{avail}:web", to_fields(update), id="1-0")
        until(lambda: len(lines(out)) == 1, proc, log)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
        server.stop()
    said = log.read_text()
    assert "Traceback" not in said and "pw-not-in-logs" not in said and "***@127.0.0.1" in said
    assert lines(out)[0]["sku"] == "sku-1"


async def test_the_wait_for_redis_is_bounded() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{held_port()}/0")  # nothing listens there
    clock = Clock()
    with pytest.raises(RedisUnavailable, match="did not answer within 1 s"):
        await wait_for_redis(client.ping, RedisWait(total_s=1.0, first_s=0.1, max_s=0.4), "here", clock.sleep,
                             clock=clock)
    await client.aclose()
    assert clock.slept[0] <= 0.1 < clock.slept[1] and max(clock.slept) <= 0.4  # growing, capped
    assert sum(clock.slept) == pytest.approx(1.0)  # the last wait is cut to the time left


def test_a_publisher_gives_up_after_redis_wait_and_a_stop_signal_ends_the_wait(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{held_port()}/0"
    gives_up = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                               "--file", str(tmp_path / "x"), "--redis-url", closed, "--redis-wait", "0.3",
                               "--metrics-port", "-1"], capture_output=True, text=True, timeout=DEADLINE_S)
    assert gives_up.returncode == 3 and "did not answer within 0.3 s" in gives_up.stderr
    assert "Traceback" not in gives_up.stderr

    waiting = publisher(tmp_path, "--redis-url", closed, "--redis-wait", "0", "--metrics-port", "-1")
    log = tmp_path / "publisher.log"
    until(lambda: "waiting for Redis at" in log.read_text(), waiting, log)
    waiting.send_signal(signal.SIGTERM)
    assert waiting.wait(DEADLINE_S) == 0


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ATP_KEY_PREFIX", "shop1:")
    monkeypatch.setenv("ATP_SHOPIFY_API_VERSION", "2026-07")
    args = build_parser().parse_args(["--channel", "web", "--adapter", "jsonl"])
    assert (make_config(args).key_prefix, args.shopify_api_version, metrics_host_of(args)) == (
        "shop1:", "2026-07", "127.0.0.1")
    assert main(["--channel", "web", "--adapter", "jsonl", "--file", "x", "--redis-url", "redis://127.0.0.1:1",
                 "--key-prefix", "a{b}:"]) == 2
    assert "atp-publisher: --key-prefix: must not contain" in capsys.readouterr().err
    monkeypatch.setenv("ATP_KEY_PREFIX", "a{b}:")  # the variable, as the service refuses it
    assert main(["--channel", "web", "--adapter", "jsonl", "--file", "x", "--redis-url", "redis://127.0.0.1:1"]) == 2
    assert "atp-publisher: ATP_KEY_PREFIX: must not contain" in capsys.readouterr().err


async def test_what_could_not_be_settled_during_an_outage_is_settled_when_redis_is_back(tmp_path: Path) -> None:
    """The delivery went out, then Redis went away before the acknowledgement: once Redis is back the
    publisher reads its own pending entries again instead of leaving them to a restart, and settles them: what it
    delivered before is skipped (known delivered, though its record's answer was lost) and recorded."""
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    client = aioredis.Redis.from_url(server.url)
    update = ChannelUpdate("web", "sku-1", "", 4, None, StockStatus.IN_STOCK, 1, 1000, 0, 2000)
    await client.xadd("atp:{avail}:web", to_fields(update), id="1-0")  # type: ignore[arg-type]
    out = tmp_path / "web.jsonl"

    class RedisGoesAway(JsonlAdapter):
        async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
            await super().deliver(channel, updates)
            if server.process is not None and server.process.poll() is None and len(lines(out)) == 1:
                server.stop()  # after the delivery, before its acknowledgement

    async def redis_is_back(_seconds: float) -> None:  # the publisher's pause after a Redis error
        if server.process is None or server.process.poll() is not None:
            server.start()

    config = PublisherConfig(channel="web", group="jsonl", block_ms=50, rate_limit_per_s=1000)
    publisher = Publisher(config, client, RedisGoesAway(out), PublisherMetrics(), sleep=redis_is_back)
    task = asyncio.create_task(publisher.run())
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not await _settled(client):
            assert not task.done() and time.monotonic() < deadline, "the pending entry was never settled"
            await asyncio.sleep(0.05)
    finally:
        publisher.stop()
        await asyncio.wait_for(task, DEADLINE_S)
        await client.aclose()
        server.stop()
    assert [u["version"] for u in lines(out)] == [1]  # delivered once: its record's answer lost, not the delivery


async def _settled(client: aioredis.Redis) -> bool:
    try:
        info: Any = await client.xpending("atp:{avail}:web", "jsonl")
        return int(info["pending"]) == 0 and await client.hget("atp:{avail}:web:delivered:jsonl", "sku-1\t") == b"1"
    except (redis.RedisError, OSError):
        return False


def test_the_log_format_and_level_are_the_services(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{held_port()}/0"
    run = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                          "--file", str(tmp_path / "x"), "--redis-url", closed, "--redis-wait", "0.3",
                          "--metrics-port", "-1"], capture_output=True, text=True, timeout=DEADLINE_S,
                         env={**os.environ, "ATP_LOG_FORMAT": "json", "ATP_LOG_LEVEL": "info"})
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert any("waiting for Redis" in line["message"] for line in lines), run.stderr
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    quiet = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                            "--file", str(tmp_path / "x"), "--redis-url", closed, "--redis-wait", "0.3",
                            "--metrics-port", "-1", "--log-level", "error"], capture_output=True, text=True,
                           timeout=DEADLINE_S)
    assert quiet.returncode == 3 and "waiting for Redis" not in quiet.stderr


def test_the_redis_url_is_logged_without_any_part_of_its_password() -> None:
    from publishers._startup import redacted

    assert redacted("redis://:p@ss@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert redacted("redis://127.0.0.1:6379/0?password=pw") == "redis://127.0.0.1:6379/0?password=***"


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_a_publisher_refuses_a_redis_that_may_evict_its_lease(tmp_path: Path, policy: str) -> None:
    """The holder's lease is the one key of a feed with a time to live: a Redis at its maxmemory
    with a ``volatile-*`` policy evicts it first (``allkeys-*``: it or the delivered versions), and
    a standby takes the group while the holder still sends — two publishers delivering one channel,
    an older level sent after a newer one (C3, C4). The publisher refuses such a Redis at start,
    naming the setting, as the service does."""
    with EmbeddedRedis(tmp_path / "redis", extra_args=["--maxmemory-policy", policy]) as server:
        done = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                               "--file", str(tmp_path / "x"), "--redis-url", server.url, "--metrics-port", "-1"],
                              capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 2, done.stderr
    assert f"maxmemory-policy is {policy}" in done.stderr and "noeviction" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_publisher_names_a_policy_it_cannot_read(tmp_path: Path) -> None:
    """Where ``CONFIG`` is forbidden (managed Redis) the publisher starts, and asks the operator to
    make sure the policy is ``noeviction``."""
    with EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "CONFIG", ""]) as server:
        proc = publisher(tmp_path, "--redis-url", server.url, "--metrics-port", "-1")
        log = tmp_path / "publisher.log"
        until(lambda: "maxmemory-policy cannot be read" in log.read_text(), proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0


async def test_a_publisher_on_a_cluster_refuses_any_node_that_may_evict(redis_cluster: Any, cluster_url: str) -> None:
    """On a Redis Cluster ``CONFIG GET`` reaches one node (redis-py: its default one): a primary
    elsewhere set to evict — the one holding the ``{avail}`` keys, say — went unseen. Every node is
    asked, and the refusal names the node."""
    from atp_service.storage.nodes import connect_any
    from publishers._startup import RedisEvicts, refuse_evicting_redis

    client = connect_any(cluster_url, 5.0, cluster=True)
    try:
        for primary in redis_cluster.primaries:
            with redis.Redis.from_url(primary.url) as node:
                node.config_set("maxmemory-policy", "allkeys-lru")
                try:
                    with pytest.raises(RedisEvicts, match=f"{primary.port}.*allkeys-lru"):
                        await refuse_evicting_redis(client)
                finally:
                    node.config_set("maxmemory-policy", "noeviction")
        await refuse_evicting_redis(client)  # every node noeviction: taken
    finally:
        await client.aclose()


def test_a_refusal_no_wait_cures_ends_the_start_naming_it_not_taken_for_redis_away(
        tmp_path: Path, redis_url: str) -> None:
    """The channel's stream a key of another type (a hand-made key, a prefix shared with another program): every
    try's ``XGROUP CREATE`` is refused WRONGTYPE. It was taken for Redis not answering: "waiting for Redis" at each
    try, then exit 3 "did not answer within --redis-wait" (with ``--redis-wait 0``, waiting for ever), for a Redis
    that answered every time. Refused at once now, exit 2, naming what Redis said, as the service refuses it."""
    r = redis.Redis.from_url(redis_url)
    try:
        r.set("atp:{avail}:web", "not a stream")
    finally:
        r.close()
    done = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                           "--file", str(tmp_path / "x"), "--redis-url", redis_url, "--metrics-port", "-1",
                           "--redis-wait", "2"], capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 2, done.stderr
    assert "WRONGTYPE" in done.stderr and "waiting for Redis" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_plain_client_of_a_cluster_node_is_refused_naming_the_setting_not_waited_for(
        tmp_path: Path, redis_cluster: Any, cluster_url: str) -> None:
    """``--redis-url`` a node of a Redis Cluster without ``--redis-cluster``: the node answers MOVED for the
    channel's keys, which a client of one Redis cannot follow. Taken for Redis away ("waiting for Redis" at every
    try), the start waited out ``--redis-wait`` and exited 3 (with 0, for ever), for a supervisor to restart it into
    the same wait. Refused at once, exit 2, naming the setting, as the service's start (``not_a_cluster_client``)."""
    def moves_the_channel(port: int) -> bool:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            try:
                node.exists("atp:{avail}:web")
            except redis.exceptions.MovedError:
                return True
            return False

    other = next(n for n in redis_cluster.primaries if moves_the_channel(n.port))
    done = subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                           "--file", str(tmp_path / "x"), "--redis-url", f"redis://127.0.0.1:{other.port}",
                           "--metrics-port", "-1", "--redis-wait", "2"], capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 2, done.stderr
    assert "--redis-cluster" in done.stderr and "waiting for Redis" not in done.stderr
    assert "Traceback" not in done.stderr
