"""The input streams read by several service processes sharing one keyspace (``ownership = leases``):
each process a consumer of its own in one group, each fact applied once, by its group's owner (the
reader sends it there), its entry acknowledged only once durable there — and a fact whose group's
owner died stays pending until another process has taken the group, then is applied and acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_client import AtpClient, Retryable
from atp_service import AtpService, Clock
from atp_service.edge import record
from atp_service.edge.auth import new_token, token_hash
from atp_service.intake.facts import Result
from atp_service.intake.owners import FactSender
from reservation import DomainError, Fact, Limits
from tests.atp_service.app.test_processes import SHARDS, Process, group_of, owned, processes
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory, services_on, spawned
from tests.ports import held_port
from tests.waiting import until

STREAMS = ("atp:in:pos", "atp:in:wms")
PEER, READER = new_token(), new_token()


@pytest.fixture
async def start_reader(redis_url: str, tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Leased processes reading the input streams, auth on: each sends other groups' facts to their
    owners with a token of the peer role alone. Leases of 5 s, turns of 200 ms: a 600 ms lease stops
    being answered for 480 ms after its renewal, which a busy host's stall outlasts (a group moved
    mid-test: calls refused GROUP_MOVED, facts sent on to another owner)."""
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "peers"\nroles = ["peer"]\ntoken_sha256 = "{token_hash(PEER)}"\n'
                       f'[[callers]]\nname = "reader"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(READER)}"\n')
    (tmp_path / "peer.token").write_text(PEER)
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=STREAMS, auth="on", callers_file=callers,
                           peer_token_file=tmp_path / "peer.token") as start:
        yield start


def counted(running: list[AtpService], metric: str, **labels: str) -> float:
    """A counter summed over the processes and over the labels not given."""
    return sum(sample.value for service in running for family in service.metrics.registry.collect()
               for sample in family.samples if sample.name == metric
               and all(sample.labels.get(k) == v for k, v in labels.items()))


async def on_hand(service: AtpService, sku: str) -> int:
    async with AtpClient(f"127.0.0.1:{service.port}", token=READER, timeout_s=5) as client:
        (position,) = await client.availability([(sku, "DC")])
        return position.on_hand


async def on_hand_at_owner(running: list[Process], sku: str, timeout_s: float = 30.0) -> int:
    """``on_hand`` asked of the group's owner — whoever that is when asked: a group handed over (or
    a lease lapsed past a stall longer than any expected) is owned anew by the time it answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        owner = next((service for service, _ in running if group_of(sku) in owned(service)), None)
        try:
            if owner is not None:
                return await on_hand(owner, sku)
        except Retryable as exc:
            if exc.reason != "GROUP_MOVED" or time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"no process owns {sku}'s group"
        await asyncio.sleep(0.05)


async def test_processes_share_the_streams_and_each_fact_is_applied_once_at_its_owner(
        start_reader: ServiceFactory, redis_url: str) -> None:
    running = await processes(start_reader, 3)
    services = [service for service, _ in running]
    skus = [f"st-{i}" for i in range(24)]
    assert {group_of(sku) for sku in skus} == set(range(SHARDS))
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    for n, sku in enumerate(skus):
        r.xadd(STREAMS[n % 2], F(f"in-{n}", "RECEIPT", sku, "DC", n + 1, now - 1000).fields())
    r.xadd(STREAMS[0], {**F("bad", "SALE", skus[0], "DC", 1, now).fields(), "quantity": "two"})
    await wait_consumed(redis_url, list(STREAMS))
    for n, sku in enumerate(skus):
        assert await on_hand_at_owner(running, sku) == n + 1, sku
    assert counted(services, "atp_facts_total", outcome="applied") == len(skus), "each fact applied once"
    assert counted(services, "atp_forwarded_calls_total", method="RecordEvents", outcome="ok") > 0
    assert [fields[b"_reason"] for _, fields in r.xrange("atp:dlq")] == [b"quantity: not an integer: 'two'"]
    names = {f"atp-1@127.0.0.1:{service.port}" for service in services}
    for stream in STREAMS:
        assert {c["name"].decode() for c in r.xinfo_consumers(stream, "atp")} == names, "a consumer per process"

    # The same identities with other quantities: each quarantined once, by the process applying it (E8).
    conflicts = [skus[next(n for n, s in enumerate(skus) if group_of(s) == g)] for g in range(SHARDS)]
    for sku in conflicts:
        n = skus.index(sku)
        r.xadd(STREAMS[n % 2], F(f"in-{n}", "RECEIPT", sku, "DC", 99, now - 1000).fields())
    await wait_consumed(redis_url, list(STREAMS))
    quarantined = [fields[b"sku"].decode() for _, fields in r.xrange("atp:quarantine")]
    assert sorted(quarantined) == sorted(conflicts), "on the quarantine stream once each"
    # Counted once the script that wrote each and acknowledged its entry answered (the process that read it, or the
    # one applying it): after Redis shows the entries consumed, by a turn of that process's loop or more.
    await until(lambda: counted(services, "atp_facts_total", outcome="quarantined") >= len(conflicts),
                "the conflicts counted")
    assert counted(services, "atp_facts_total", outcome="quarantined") == len(conflicts)
    for sku in conflicts:
        assert await on_hand_at_owner(running, sku) == skus.index(sku) + 1


async def test_facts_sent_to_their_owner_are_split_to_fit_its_message_size(
        redis_url: str) -> None:
    """A read of many facts with long ids is more than an owner takes in one message
    (``max_message_bytes``): sent whole, it was refused on every retry, its entries pending for good."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=STREAMS[:1], max_message_bytes=64 << 10, ingest_count=1000) as start:
        running = await processes(start, 2)
        skus = [f"split-{i}" for i in range(40)]
        now = int(time.time() * 1000)
        r = redis.Redis.from_url(redis_url)
        long_id = "x" * 100
        with r.pipeline(transaction=False) as pipe:
            for n in range(1200):  # ~300 KiB of facts, half of them owned by the other process
                pipe.xadd(STREAMS[0], F(f"{long_id}-{n}", "RECEIPT", skus[n % len(skus)], "DC", 1, now - 1000,
                                        source="s" * 100).fields())
            pipe.execute()
        await wait_consumed(redis_url, [STREAMS[0]], timeout_s=30)
        for sku in skus:
            assert await on_hand_at_owner(running, sku) == 30, sku
        assert r.xlen("atp:dlq") == 0


@pytest.fixture
async def start_leased(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """The reader: its own leases long enough for a busy host's stalls (a 600 ms one lapsed there, its
    groups lost and their alert fired); the other process's (``spawn_owner``) set per test."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=STREAMS) as start:
        yield start


def spawn_owner(redis_url: str, port: int, log: Path, lease_ms: int = 600) -> subprocess.Popen[bytes]:
    """A leased ``atp-service serve`` process that reads no input stream: it only owns groups. It
    balances every 200 ms whatever its lease (by default a third of it: 20 s for a 60 s lease, for
    the groups the reader hands over to be taken)."""
    cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", str(SHARDS),
           "--ownership", "leases", "--lease-ms", str(lease_ms), "--balance-ms", "200"]
    return spawned(subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                    env={**os.environ, "ATP_INPUT_STREAMS": ""}))


async def test_a_fact_whose_owner_died_stays_pending_until_its_group_is_taken_then_is_applied(
        start_leased: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    reader, _ = await start_leased(port=held_port(), host="127.0.0.1")
    membership = reader.membership
    assert membership is not None
    port = held_port()
    owner = spawn_owner(redis_url, port, tmp_path / "owner.log")
    elsewhere = f"127.0.0.1:{port}"
    await until(lambda: sum(membership.where(g)[0] == elsewhere for g in range(SHARDS)) == SHARDS // 2
                and len(owned(reader)) == SHARDS // 2, "the groups shared with the other process", 60)
    sku = next(s for s in (f"dead-{i}" for i in range(64)) if group_of(s) not in owned(reader))
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    r = redis.Redis.from_url(redis_url)
    r.xadd(STREAMS[0], F("orphan", "RECEIPT", sku, "DC", 7, int(time.time() * 1000) - 1000).fields())
    seen_pending, deliveries, deadline = False, 0, time.monotonic() + 30
    while time.monotonic() < deadline:  # acknowledged only once applied here, after the group was taken
        (group,) = [g for g in r.xinfo_groups(STREAMS[0]) if g["name"] == b"atp"]
        taken = group_of(sku) in owned(reader)
        seen_pending |= bool(group["pending"]) and not taken
        for entry in r.xpending_range(STREAMS[0], "atp", "-", "+", 1):
            assert entry["consumer"].decode() == f"atp-1@127.0.0.1:{reader.port}"
            deliveries = max(deliveries, entry["times_delivered"])
        if not group["pending"] and not group["lag"]:
            assert taken, "acknowledged before the fact's group had an owner"
            break
        await asyncio.sleep(0.01)
    assert seen_pending, "read while the group's owner was dead, and left pending"
    # Read again with backoff, not in a loop. Only the bound above is asserted: the delivery that applies
    # it can be counted and acknowledged between two polls (a busy machine), so the most seen may be 1.
    assert 1 <= deliveries <= 30, f"read again with backoff, not in a loop ({deliveries} deliveries)"
    assert await on_hand(reader, sku) == 7
    assert counted([reader], "atp_facts_total", outcome="applied") == 1


def stream_state(r: redis.Redis, stream: str) -> tuple[int, int]:
    """The group's pending entries and its lag (entries not read yet) on a stream."""
    (group,) = [g for g in r.xinfo_groups(stream) if g["name"] == b"atp"]
    return group["pending"], group["lag"] or 0


async def test_an_owner_that_does_not_answer_stalls_no_reading(
        start_leased: ServiceFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner of half the groups is paused (SIGSTOP) with leases long enough to stay its own: the
    facts of the reader's groups are still applied and acknowledged, wave after wave, while sends to the
    paused owner wait; the paused owner's stay pending, and are applied once it goes on. The first send
    fails after 1 s (as in ``test_processes_streams_probe``): the owner is skipped from then on and tried
    again by the reader's passes over its pending entries, each try then waiting until the owner goes on
    (``hung``: gRPC's own attempt to connect to the paused process ends within 20 s, and then its calls fail at
    once, which a reading loop waiting for its tries would outwait within a wave's bound)."""
    monkeypatch.setattr(record, "SEND_TIMEOUT_S", 1.0)  # the first send fails soon: the owner then skipped
    reader, _ = await start_leased(port=held_port(), host="127.0.0.1")
    membership, ingestor = reader.membership, reader.ingestor
    assert membership is not None and ingestor is not None and ingestor._owners is not None
    sends = ingestor._owners
    port = held_port()
    owner = spawn_owner(redis_url, port, tmp_path / "owner.log", lease_ms=60_000)
    elsewhere = f"127.0.0.1:{port}"
    await until(lambda: sum(membership.where(g)[0] == elsewhere for g in range(SHARDS)) == SHARDS // 2
                and len(owned(reader)) == SHARDS // 2, "the groups shared with the other process", 60)
    skus = [f"silent-{i}" for i in range(64)]
    here = [s for s in skus if group_of(s) in owned(reader)][:8]
    away = [s for s in skus if group_of(s) not in owned(reader)][:8]
    r = redis.Redis.from_url(redis_url)
    passes, going_on = passes_counted(reader, monkeypatch), asyncio.Event()
    owner.send_signal(signal.SIGSTOP)
    try:
        for wave in range(3):
            now = int(time.time() * 1000) - 1000
            for n, sku in enumerate(here + away):
                r.xadd(STREAMS[n % 2], F(f"w{wave}-{sku}", "RECEIPT", sku, "DC", 1, now).fields())
            pending = len(away) * (wave + 1)
            await until(lambda: sum(stream_state(r, s)[0] for s in STREAMS) == pending  # noqa: B023
                        and not any(stream_state(r, s)[1] for s in STREAMS), "the reader's facts acknowledged", 30)
            for sku in here:
                assert await on_hand(reader, sku) == wave + 1, sku
            if wave == 0:
                await until(lambda: (elsewhere, None) in sends._failing, "the paused owner's send failed: skipped")
                monkeypatch.setattr(sends, "_send", hung(sends._send, elsewhere, going_on))  # every try waits
            if wave < 2:  # pending passes meet the stuck sends before the next wave; none comes after the last
                begun = passes[0]
                await until(lambda: passes[0] >= begun + 2, "two passes over the pending entries", 30)  # noqa: B023
    finally:
        owner.send_signal(signal.SIGCONT)
        going_on.set()
    await wait_consumed(redis_url, list(STREAMS))
    for sku in away:
        assert await on_hand(reader, sku) == 3, sku


def hung(send: FactSender, owner: str, going_on: asyncio.Event) -> FactSender:
    """``send``, each send to ``owner`` waiting for ``going_on`` first: an owner that does not answer, for as long
    as it is paused."""
    async def sent(to: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        if to == owner:
            await going_on.wait()
        return await send(to, facts)

    return sent


def passes_counted(service: AtpService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many passes over its own pending entries ``service``'s ingestor has begun (each its batches settled or
    put off by one waiting for an owner: ``StreamIngestor._retry_pending``) from now on."""
    ingestor, passes = service.ingestor, [0]
    assert ingestor is not None
    retry_pending = ingestor._retry_pending

    async def counted() -> None:
        passes[0] += 1
        await retry_pending()

    monkeypatch.setattr(ingestor, "_retry_pending", counted)
    return passes


async def reader_and_owner(start: ServiceFactory, reader_clock: Clock | None = None,
                           **owner_settings: Any) -> list[Process]:
    """Two leased processes sharing the groups: the first reads the input stream ``STREAMS[0]`` (on
    ``reader_clock`` where given), the second none (started with ``owner_settings``, its clock among them)."""
    settings = iter([{"clock": reader_clock, "input_streams": STREAMS[:1]}, {**owner_settings, "input_streams": ()}])
    return await processes(lambda **kw: start(**next(settings), **kw), 2)


async def test_a_fact_its_owner_refuses_as_in_the_future_is_dead_lettered_naming_the_entry_s_field(
        redis_url: str) -> None:
    """A dead letter names the field of the entry at fault (`event_time_ms`), whichever process owns the
    fact's group: the owner judges E7 by RecordEvents, whose field is `event_time`, a name the input
    streams' format does not have."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS) as start:
        running = await reader_and_owner(start)
        sku = next(s for s in (f"ahead-{i}" for i in range(64)) if group_of(s) in owned(running[1][0]))
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAMS[0], F("far", "RECEIPT", sku, "DC", 1, int(time.time() * 1000) + 3_600_000).fields())
        r.xadd(STREAMS[0], F("near", "RECEIPT", sku, "DC", 2, int(time.time() * 1000) - 1000).fields())
        await wait_consumed(redis_url, [STREAMS[0]])
        ((_, dead),) = r.xrange("atp:dlq")
        assert dead[b"event_id"] == b"far"
        assert (dead[b"_field"], dead[b"_code"]) == (b"event_time_ms", b"INVALID_FIELD")
        assert dead[b"_reason"].startswith(b"event_time_ms: "), dead[b"_reason"]
        assert await on_hand_at_owner(running, sku) == 2


async def test_a_fact_read_as_in_the_future_and_sent_to_its_owner_is_counted_moved_where_it_was_read(
        redis_url: str) -> None:
    """OPERATIONS: a fact sent to its owner counts ``atp_facts_total{outcome="moved"}`` where it was read.
    One this process's clock finds stamped past the allowed skew goes to its owner too, to be judged
    there (E7 against E8): it was counted nowhere where it was read."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS) as start:
        running = await reader_and_owner(start)
        sku = next(s for s in (f"ahead-{i}" for i in range(64)) if group_of(s) in owned(running[1][0]))
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAMS[0], F("far", "RECEIPT", sku, "DC", 1, int(time.time() * 1000) + 3_600_000).fields())
        await wait_consumed(redis_url, [STREAMS[0]])
        assert r.xlen("atp:dlq") == 1
        assert counted([running[0][0]], "atp_facts_total", origin="stream", outcome="moved") == 1
        assert counted([running[1][0]], "atp_facts_total", outcome="invalid") == 1


async def test_a_fact_its_owner_refuses_past_one_of_its_limits_is_dead_lettered_naming_that_reason(
        redis_url: str) -> None:
    """A dead letter's ``_code`` is the reason the owner gave: a fact of a group another process owns,
    refused there past a limit (its ``max_id_length``, shorter than the reader's during a rolling
    change of it), was dead-lettered ``INVALID_FIELD`` (the answer read back as a malformed field
    whatever its reason), so a tool sorting dead letters by ``_code`` took it for a producer's typo."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS) as start:
        running = await reader_and_owner(start, limits=Limits(max_id_length=16))
        sku = next(s for s in (f"long-{i}" for i in range(64)) if group_of(s) in owned(running[1][0]))
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAMS[0], F("an-event-id-past-16-bytes", "RECEIPT", sku, "DC", 1, int(time.time() * 1000)).fields())
        await wait_consumed(redis_url, [STREAMS[0]])
        ((_, dead),) = r.xrange("atp:dlq")
        assert (dead[b"_field"], dead[b"_code"]) == (b"event_id", b"LIMIT_EXCEEDED"), dead
        assert b"max_id_length" in dead[b"_reason"], dead[b"_reason"]
