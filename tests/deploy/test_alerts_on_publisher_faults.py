"""Each publisher fault, caused on real ``atp-publisher`` processes (a real Redis, a real local HTTP
destination), fires its alert over the values their own /metrics endpoints export; healthy
publishers fire none. Two publishers of one group are scraped together, as Prometheus sees them:
``ATPPublisherNoneDelivers`` reads every publisher of a channel and group at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from atp_service.storage.channel_wire import script_item, to_fields
from publishers import PublisherConfig
from reservation import ChannelUpdate, StockStatus
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory, spawned
from tests.ports import held_port
from tests.publishers.http_helpers import serve
from tests.publishers.test_publisher import SECRET
from tests.publishers.test_publisher_lease import DELIVERED, KEY, Destination
from tests.waiting import until

from .scraped_alerts import Scrape, firing, scrape

HELD = frozenset({"atp_publisher_lease_held", "atp_publisher_restamp_owed_keys"})
"""Gauges of a state (who holds the lease, the keys owed a naming): after a change they stay (counted on, 1 -> 0
would go negative, 3 owed would grow by 3 a minute)."""
SERVICE_UP = {'up{instance="atp:9464", job="atp-service"}': 1.0}


class Running:
    """One ``atp-publisher`` process of channel web, group webhook, with its metrics port. A 5 s lease
    and requests of up to 1 s: a busy host's stall must fire no alert of its own (a 1 s lease stopped
    covering a 0.3 s request 0.37 s after its renewal, counted lost; a request past 0.3 s, retried)."""

    def __init__(self, url: str, redis_url: str, log: Path, *more: str) -> None:
        self.port = held_port()
        self.target = {"job": "atp-publisher", "instance": f"publisher-{self.port}:9465"}
        flags = ["--channel", "web", "--adapter", "webhook", "--url", url, "--redis-url", redis_url,
                 "--group", "webhook", "--lease", "5", "--request-timeout", "1", "--rate", "10000",
                 "--backoff-base", "0.01", "--backoff-max", "0.05", "--metrics-port", str(self.port),
                 "--log-format", "json", *more]
        self.log = log
        with log.open("wb") as out:
            self.proc = spawned(subprocess.Popen(
                [sys.executable, "-m", "publishers.cli", *flags], stdout=out, stderr=out,
                env={**os.environ, "ATP_WEBHOOK_SECRET": SECRET, "ATP_METRICS_HOST": "127.0.0.1"}))

    def scrape(self) -> Scrape:
        """Its samples, with the service Prometheus also scrapes (else ``ATPServiceMissing``)."""
        return {**SERVICE_UP, **scrape(self.port, self.target)}

    def sample(self, name: str) -> float | None:
        try:
            return self.scrape().get(f'{name}{{channel="web", group="webhook", '
                                     f'instance="{self.target["instance"]}", job="atp-publisher"}}')
        except OSError:  # not listening yet
            return None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def publishers() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.stop()


async def publish(client: aioredis.Redis, first: int, n: int, follows: int | None = None) -> None:
    """``n`` changes from version ``first`` on, stamped now (the delay histogram reads their time). ``follows``: the
    first is a run's first, following that version (the service's start after Redis lost the versions between)."""
    now_ms = int(time.time() * 1000)
    for version in range(first, first + n):
        update = ChannelUpdate("web", f"s{version % 5}", "", version % 7, None,
                               StockStatus.OUT_OF_STOCK if version % 7 == 0 else StockStatus.IN_STOCK,
                               version, now_ms, now_ms, now_ms, follows if version == first else None)
        await client.xadd("atp:{avail}:web", to_fields(update), id=f"{version}-0")  # type: ignore[arg-type]
        # And its value in the channel's state hash, as the desk writes it with every entry: a holder that finds
        # entries trimmed unread compares what it delivered with it (a key absent there: delivered at a lost version).
        await client.hset(PublisherConfig(channel="web").state_key, f"{update.sku}\t", script_item(update)[-1])


async def recorded(client: aioredis.Redis, sku: str, version: int) -> bool:
    """The holder recorded ``version`` of ``sku`` delivered: its request answered and settled."""
    return await client.hget(DELIVERED, f"{sku}\t") == str(version).encode()


async def set_calls(client: aioredis.Redis) -> int:
    """``SET``s Redis has run (``INFO commandstats``): after its start a publisher sends one only to take the lease."""
    return int((await client.info("commandstats")).get("cmdstat_set", {}).get("calls", 0))


async def _more_sets(client: aioredis.Redis, since: int, more: int) -> bool:
    return await set_calls(client) >= since + more


def together(*running: Running) -> Scrape:
    return {name: value for one in running for name, value in one.scrape().items()}


async def holding(running: Running) -> None:
    await until(lambda: running.sample("atp_publisher_lease_held") == 1.0, f"{running.target} holds the lease")


async def holder_and_standby(url: str, redis_url: str, logs: tuple[Path, Path],
                             publishers: list[Running]) -> tuple[Running, Running]:
    """Two publishers of one group, the first holding its lease, the second a standby scraped."""
    holder = Running(url + "/in", redis_url, logs[0])
    publishers.append(holder)
    await holding(holder)
    standby = Running(url + "/in", redis_url, logs[1])
    publishers.append(standby)
    await until(lambda: standby.sample("atp_publisher_lease_held") == 0.0, "the standby is scraped")
    return holder, standby


async def test_healthy_publishers_holder_and_standby_fire_no_alert(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    end = Destination()
    with serve(end.handle) as url:
        holder, standby = await holder_and_standby(url, redis_url, (tmp_path / "a.log", tmp_path / "b.log"),
                                                   publishers)
        await publish(client, 1, 5)
        await until(end.got(("s0", 5)), "the first changes delivered")
        before = together(holder, standby)
        await publish(client, 6, 20)
        await until(end.got(("s0", 25)), "the rest delivered")
        assert firing(before, together(holder, standby), tmp_path, held=HELD) == set()


async def test_a_holder_paused_past_its_lease_while_a_standby_takes_over_fires_lease_lost(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    end = Destination()
    with serve(end.handle) as url:
        old, new = await holder_and_standby(url, redis_url, (tmp_path / "old.log", tmp_path / "new.log"),
                                            publishers)
        await publish(client, 1, 3)
        # The destination takes v3 before the holder reads its answer: paused in between, it would wake
        # past its request's bound and count a retry (ATPPublisherRetrying). Paused once v3 is recorded,
        # it waits for nothing of its own: what it counts on waking is the lease it lost.
        await until(lambda: recorded(client, "s3", 3), "delivered by the holder, and recorded")
        before = together(old, new)
        os.kill(old.proc.pid, signal.SIGSTOP)
        await holding(new)  # the paused one's lease lapsed
        await publish(client, 4, 3)
        await until(end.got(("s1", 6)), "delivered by the new holder")
        os.kill(old.proc.pid, signal.SIGCONT)
        await until(lambda: old.sample("atp_publisher_lease_lost_total") == 1.0, "the old holder notices")
        after = together(old, new)
    assert after[f'atp_publisher_lease_held{{channel="web", group="webhook", instance="{old.target["instance"]}", '
                 'job="atp-publisher"}'] == 0.0
    assert firing(before, after, tmp_path, held=HELD) == {"ATPPublisherLeaseLost"}


async def test_a_lease_key_without_ttl_held_by_no_publisher_fires_none_delivers(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    """The lease overwritten by hand without a TTL (the runbook's case): the holder loses it, and no
    publisher can take it again while updates wait."""
    end = Destination()
    with serve(end.handle) as url:
        only = Running(url + "/in", redis_url, tmp_path / "only.log")
        publishers.append(only)
        await holding(only)
        await publish(client, 1, 3)
        await until(end.got(("s3", 3)), "delivered")
        before = only.scrape()
        await client.set(KEY, "by-hand")
        await until(lambda: only.sample("atp_publisher_lease_held") == 0.0, "the holder loses the lease")
        sets = await set_calls(client)
        await publish(client, 4, 3)
        # Standby tries at the lease (one a second), counted where they land: each is a SET NX, and a publisher
        # that took the lease tries no more, so a third try means the first two were refused. A sleep passed
        # where the host was too slow for any try to come in it.
        await until(lambda: _more_sets(client, sets, 3), "three tries at the lease: it stays a standby")
        after = only.scrape()
    assert end.versions()[-1] == ("s3", 3), "delivered without the lease"
    assert firing(before, after, tmp_path, held=HELD) == {"ATPPublisherLeaseLost", "ATPPublisherNoneDelivers"}


async def test_a_destination_refusing_everything_fires_the_delivery_alerts(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    end = Destination(status=500)
    with serve(end.handle) as url:
        only = Running(url + "/in", redis_url, tmp_path / "only.log", "--max-attempts", "2")
        publishers.append(only)
        await holding(only)
        before = only.scrape()
        await publish(client, 1, 5)
        await until(lambda: (only.scrape().get('atp_publisher_dead_lettered_total{channel="web", '
                                               f'instance="{only.target["instance"]}", job="atp-publisher"}}')
                             or 0) >= 1, "dead letters")
        after = only.scrape()
    assert firing(before, after, tmp_path) == {"ATPPublisherDeadLetters", "ATPPublisherRetrying"}


async def test_a_channel_fed_while_no_publisher_of_it_is_scraped_fires_an_alert(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """Every publisher of channel web gone (its deployment scaled to 0 or deleted, its scrape target
    renamed): the service writes the channel's updates, none reaches the destination, and no
    publisher alert could fire — ATPPublisherDown needs a target, ATPPublisherNoneDelivers a series."""
    service, client = await start_service(metrics_port=0, estate=write_estate(tmp_path))
    now_ms = int(time.time() * 1000)  # facts on time (old ones fire ATPFactsLate)
    # A baseline, then a change: both series there before (a series born at a value shows no rise).
    await client.record_events([fact("c0", "COUNT", "sku-a", "dc-1", 40, now_ms)])
    await until(lambda: _published(scrape(service.metrics_port)) >= 1, "the channel written")
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 39, now_ms + 1)])
    await until(lambda: _published(scrape(service.metrics_port)) >= 2, "a change written")
    before = scrape(service.metrics_port)
    for n in range(2, 7):
        await client.record_events([fact(f"c{n}", "COUNT", "sku-a", "dc-1", 40 - n, now_ms + n)])
    await until(lambda: _published(scrape(service.metrics_port)) > _published(before), "more written")
    assert firing(before, scrape(service.metrics_port), tmp_path) == {"ATPChannelWithoutPublisher"}


def _published(scraped: Scrape) -> float:
    return sum(value for name, value in scraped.items()
               if name.startswith("atp_channel_updates_published_total{") and 'channel="web"' in name)


async def test_reads_the_replicas_never_confirm_fire_not_replicated(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    """--wait-replicas above the replicas there are (or a replica away for good): every read is held back,
    nothing reaches the destination — with no delivery, no retry and no dead letter, no delivery alert reads
    anything, and the holder keeps its lease."""
    end = Destination()
    with serve(end.handle) as url:
        only = Running(url + "/in", redis_url, tmp_path / "only.log", "--wait-replicas", "1",
                       "--wait-timeout-ms", "50")
        publishers.append(only)
        await holding(only)
        before = only.scrape()
        await publish(client, 1, 3)
        held_back = f'atp_publisher_not_replicated_total{{channel="web", instance="{only.target["instance"]}", ' \
                    'job="atp-publisher"}'
        await until(lambda: (only.scrape().get(held_back) or 0) >= 2, "reads held back, twice")
        after = only.scrape()
    assert end.versions() == [], "delivered what no replica confirmed"
    assert firing(before, after, tmp_path, held=HELD) == {"ATPPublisherNotReplicated"}


async def test_a_restamp_key_of_another_type_after_redis_lost_data_fires_restamp_refused_until_deleted(
        client: aioredis.Redis, redis_url: str, tmp_path: Path, publishers: list[Running]) -> None:
    """Redis restored from data older than what the holder delivered (s4, s0, s1 at versions 4 to 6), the service's
    next run on it (its first entry follows version 3), and the channel's restamp key a string: delivery goes on, the
    three keys are owed a naming (C4) and the destination keeps their lost values. Deleted, the key takes the names
    (no restart) and the alert clears."""
    restamp_key = PublisherConfig(channel="web").restamp_key
    end = Destination()
    with serve(end.handle) as url:
        only = Running(url + "/in", redis_url, tmp_path / "only.log")
        publishers.append(only)
        await holding(only)
        await publish(client, 1, 3)
        await until(lambda: recorded(client, "s3", 3), "delivered, recorded and acknowledged")
        image = await saved(client)
        await publish(client, 4, 3)  # s4, s0, s1: delivered, then lost
        await until(lambda: recorded(client, "s1", 6), "the versions to lose delivered and recorded")
        before = only.scrape()
        await restored(client, image, at_once=True)
        await client.set(restamp_key, "not a hash")  # the operator's mistake
        await publish(client, 10, 1, follows=3)  # the service's next run: its first entry
        await until(end.got(("s0", 10)), "delivered past the refusal")
        await until(lambda: owed(only) == 3.0, "the keys delivered at lost versions owed a naming")
        after = only.scrape()
        assert firing(before, after, tmp_path, held=HELD) == {"ATPPublisherRestampRefused"}

        await client.delete(restamp_key)  # the runbook's fix
        await until(lambda: owed(only) == 0.0, "the names written once the key is deleted")
        fixed = only.scrape()
    assert await client.hgetall(restamp_key) == {b"s4\t": b"4", b"s0\t": b"5", b"s1\t": b"6"}
    assert firing(before, fixed, tmp_path, held=HELD) == set()


def owed(running: Running) -> float | None:
    """Its ``atp_publisher_restamp_owed_keys``; None: not exported (yet)."""
    return running.scrape().get('atp_publisher_restamp_owed_keys{channel="web", '
                                f'instance="{running.target["instance"]}", job="atp-publisher"}}')
