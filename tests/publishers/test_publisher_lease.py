"""One delivering atp-publisher per channel and consumer group: a lease in Redis, a standby that
takes over, and a fence so that a holder paused past its lease neither sends nor records (C3, C4).
Real Redis, real local HTTP receivers, a real publisher process paused with SIGSTOP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from publishers import Publisher, PublisherConfig, PublisherMetrics, WebhookAdapter
from tests.conftest import spawned
from tests.publishers.http_helpers import serve
from tests.publishers.test_publisher import SECRET, publish, update
from tests.waiting import until

LEASE = {"lease_s": 5.0, "send_timeout_s": 0.3}
"""A takeover within seconds, and no lapse by a busy host's stall: a 1 s lease, renewed every third
of it, stopped covering a request 0.37 s after a renewal (the holder went standby) and lapsed in
Redis 0.67 s after (the standby took it, and delivered while the test had the other one hold it)."""
KEY = "atp:{avail}:web:lease:webhook"
DELIVERED = "atp:{avail}:web:delivered:webhook"


def start_publisher_process(url: str, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    """``atp-publisher`` of channel web, group webhook, with a 5 s lease (``LEASE``), logging JSON to ``log``."""
    flags = ["--channel", "web", "--adapter", "webhook", "--url", url, "--redis-url", redis_url,
             "--group", "webhook", "--lease", "5", "--request-timeout", "0.3", "--rate", "10000",
             "--backoff-base", "0.01", "--backoff-max", "0.05", "--metrics-port", "-1", "--log-format", "json"]
    with log.open("wb") as out:
        return spawned(subprocess.Popen([sys.executable, "-m", "publishers.cli", *flags], stdout=out, stderr=out,
                                        env={**os.environ, "ATP_WEBHOOK_SECRET": SECRET}))


class Destination:
    """A webhook receiver recording what reached it, in order; ``on_request`` runs before it answers.
    As Standard Webhooks asks of a receiver, a batch sent again with a ``webhook-id`` it has taken
    (a try whose answer the publisher did not read in time) is answered and not taken twice."""

    def __init__(self, status: int = 200, on_request: Callable[[], None] = lambda: None) -> None:
        self.status, self.on_request = status, on_request
        self.received: list[dict[str, Any]] = []
        self.taken: set[str] = set()
        self.requests = 0
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests += 1
            first = self.requests == 1
        if first:
            self.on_request()
        with self.lock:
            msg_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id", "")
            if self.status == 200 and msg_id not in self.taken:
                self.taken.update([msg_id] if msg_id else [])
                self.received.extend(json.loads(body)["updates"])
        return self.status, {}, b""

    def got(self, sent: tuple[str, int]) -> Callable[[], bool]:
        return lambda: sent in self.versions()

    def versions(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(u["sku"], u["version"]) for u in self.received]


def config(**overrides: Any) -> PublisherConfig:
    base: dict[str, Any] = {"channel": "web", "group": "webhook", "block_ms": 50, "rate_limit_per_s": 10_000,
                            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 5, **LEASE}
    return PublisherConfig(**{**base, **overrides})


def held(metrics: PublisherMetrics) -> float | None:
    return metrics.registry.get_sample_value("atp_publisher_lease_held", {"channel": "web", "group": "webhook"})


def never_backwards(seen: list[tuple[str, int]]) -> None:
    newest: dict[str, int] = {}
    for sku, version in seen:
        assert version > newest.get(sku, 0), f"{sku}: version {version} delivered after {newest[sku]}"
        newest[sku] = version


async def test_two_publishers_of_one_group_deliver_through_one_and_the_standby_takes_over_at_its_stop(
        client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="publishers")
    with serve(lambda *a: first.handle(*a)) as url_a, serve(lambda *a: second.handle(*a)) as url_b:
        first, second = Destination(), Destination()
        metrics = [PublisherMetrics(), PublisherMetrics()]
        publishers = [Publisher(config(), client, WebhookAdapter(url + "/in", SECRET), m)
                      for url, m in zip((url_a, url_b), metrics, strict=True)]
        tasks = [asyncio.create_task(p.run()) for p in publishers]
        try:
            await until(lambda: any(getattr(r, "event", "") == "publisher_standby" for r in caplog.records),
                        "the other one says it is a standby")
            assert [held(m) for m in metrics] in ([0.0, 1.0], [1.0, 0.0])
            holder = 0 if held(metrics[0]) == 1.0 else 1
            ends = [first, second]
            # Rounds of changes, each delivered before the next: two readers of one group would split them.
            for n in range(1, 21):
                sent = (f"s{n % 4}", n)
                await publish(client, [update(*sent, n)])
                await until(ends[holder].got(sent), f"version {n} delivered")
            assert ends[1 - holder].versions() == [], "the standby delivered while the other held the lease"
            # The receiver has v20 before the holder reads its answer: a stop before it records v20 leaves
            # it pending, and the standby sends it again (at least once, C3) — not the clean hand-over tried here.
            await until(lambda: _recorded(client, 20, "s0"), "version 20 recorded delivered")
            publishers[holder].stop()
            await asyncio.wait_for(tasks[holder], 10)
            await until(lambda: held(metrics[1 - holder]) == 1.0, "the standby takes the lease")
            await publish(client, [update("s1", 0, 21), update("s2", 7, 22)])
            await until(lambda: ("s2", 22) in ends[1 - holder].versions(), "the new holder delivers")
            never_backwards(ends[holder].versions() + ends[1 - holder].versions())
        finally:
            for p in publishers:
                p.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def paused() -> Iterator[list[int]]:
    """Pids this test stopped with SIGSTOP: continued at the end (then killed by ``spawned``)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("answer", [200, 503])
async def test_a_holder_paused_past_its_lease_neither_sends_nor_records_over_the_new_holder(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, paused: list[int], answer: int) -> None:
    """The old holder is stopped (SIGSTOP) while its request for v10 (5 units) is in flight; the
    standby takes over and delivers v10 then v11 (0 units). Woken, the old holder reads its answer
    (200: it would record v10 over v11; 503: it would send v10 again after v11): it does neither,
    and says it lost the lease."""
    old: subprocess.Popen[bytes] | None = None

    def pause_old() -> None:
        assert old is not None
        os.kill(old.pid, signal.SIGSTOP)
        paused.append(old.pid)

    stale, fresh = Destination(answer, pause_old), Destination()
    log = tmp_path / "old.log"
    with serve(stale.handle) as url_a, serve(fresh.handle) as url_b:
        old = start_publisher_process(url_a + "/in", redis_url, log)
        await until(lambda: client.exists(KEY), "the first publisher takes the lease")
        metrics = PublisherMetrics()
        new = Publisher(config(), client, WebhookAdapter(url_b + "/in", SECRET), metrics)
        task = asyncio.create_task(new.run())
        try:
            await publish(client, [update("s", 5, 10)])
            await until(lambda: ("s", 10) in fresh.versions(), "the standby takes over v10 (old one paused)")
            await publish(client, [update("s", 0, 11)])
            await until(lambda: ("s", 11) in fresh.versions(), "the new holder delivers v11")
            await until(lambda: _recorded(client, 11), "v11 recorded")
            os.kill(old.pid, signal.SIGCONT)

            async def woke() -> bool:
                return ("publisher_lease_lost" in log.read_text() or stale.requests > 1
                        or not await _recorded(client, 11))
            await until(woke, "the old holder wakes and notices")
            assert stale.requests == 1, "the old holder sent again after it lost the lease"
            assert await _recorded(client, 11), "the old holder's record overwrote the newer one"
            assert held(metrics) == 1.0
        finally:
            new.stop()
            await asyncio.wait_for(task, 10)
            old.terminate()
            old.wait(10)


async def _recorded(client: aioredis.Redis, version: int, sku: str = "s") -> bool:
    return await client.hget(DELIVERED, f"{sku}\t") == str(version).encode()


def test_a_lease_too_short_for_one_request_is_refused_naming_both_settings() -> None:
    with pytest.raises(ValueError, match=r"lease_s \(--lease\).*3 x send_timeout_s \(--request-timeout\)"):
        PublisherConfig(channel="web", lease_s=20.0, send_timeout_s=10.0)
