"""A process advertising the address of another live process of its keyspace (``ownership = leases``)
refuses to start (``app/shared_address.py``): both counted the other as themselves, both took groups,
and the groups of the one the address does not reach answered nobody, for good, nothing said. A
restart at the address of a process that stopped renewing (killed) waits its entry out and serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import pytest
import redis.asyncio as aioredis

from atp_service import AtpService
from atp_service.app.keyspace import StartupError
from atp_service.app.membership import Membership
from atp_service.app.shared_address import refuse_if_shared
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.atp_service.app.test_processes import SHARDS, owned, start_process
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name

SHARED = "advertise_address: another live process advertises"


async def test_a_process_advertising_the_address_of_a_live_one_refuses_to_start(start_process: ServiceFactory) -> None:
    first, _ = await start_process(port=held_port(), host="127.0.0.1")
    assert owned(first) == set(range(SHARDS))
    second = start_process(port=held_port(), host="127.0.0.1", advertise_address=f"127.0.0.1:{first.port}")
    with pytest.raises(StartupError, match=SHARED):
        await second
    assert owned(first) == set(range(SHARDS))  # every group still answered at the address


async def test_two_processes_starting_at_once_at_one_address_do_not_both_serve(start_process: ServiceFactory) -> None:
    port = held_port()
    shared = {"host": "127.0.0.1", "advertise_address": f"127.0.0.1:{port}"}
    ends = await asyncio.gather(start_process(port=port, host="127.0.0.1"),
                                start_process(port=held_port(), **shared), return_exceptions=True)
    refused = [end for end in ends if isinstance(end, StartupError)]
    assert refused and all(SHARED in str(end) for end in refused), ends  # one, or both: said, not served silently
    served: list[AtpService] = [end[0] for end in ends if isinstance(end, tuple)]
    for service in served:  # one alone served: every group taken at its address
        assert owned(service) == set(range(SHARDS))


async def test_a_restart_at_the_address_of_a_killed_process_waits_its_entry_out(start_process: ServiceFactory,
                                                                                   redis_url: str) -> None:
    """A killed process's member entry stays until Redis times it out (a lease): not renewed, it is no live
    process, and the restart at its address serves once it is gone."""
    port = held_port()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        seconds, micros = await admin.time()
        dead = f"127.0.0.1:{port}|0123456789ab"  # as the killed process registered, its last renewal just now
        await admin.zadd("atp:members", {dead: seconds * 1000 + micros // 1000 + 1000})
        service, _ = await start_process(port=port, host="127.0.0.1", lease_ms=1000)
        assert owned(service) == set(range(SHARDS))
        assert dead.encode() not in await admin.zrange("atp:members", 0, -1)
    finally:
        await admin.aclose()


async def test_two_processes_at_one_address_whose_first_registration_failed_do_not_both_serve(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start's first renewal may not land (Redis away a moment: it goes on, renewing again soon). Its
    read of the members before its own entry is there proves nothing: two processes starting at once at
    one address, each unregistered, each found the address free and both served — the groups of the one
    the address does not reach answering nobody, for good. Only a read made once its own entry is in the
    members counts: of two such reads, the later one finds the other process."""
    renew_members = Membership._renew_members
    failed: set[int] = set()

    async def first_one_lost(self: Membership) -> str:
        if id(self) not in failed:  # this process's first registration: not landed
            failed.add(id(self))
            return "members: ConnectionError('Redis away a moment')"
        return await renew_members(self)

    monkeypatch.setattr(Membership, "_renew_members", first_one_lost)
    port = held_port()
    shared = {"host": "127.0.0.1", "advertise_address": f"127.0.0.1:{port}"}
    ends = await asyncio.gather(start_process(port=port, host="127.0.0.1"),
                                start_process(port=held_port(), **shared), return_exceptions=True)
    assert len(failed) == 2, "each start's first registration was lost"
    refused = [end for end in ends if isinstance(end, StartupError)]
    assert refused and all(SHARED in str(end) for end in refused), ends  # one, or both: said, not served silently


async def test_a_start_waiting_out_another_entry_at_its_address_says_so(redis_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The wait for an entry of another process at this address to be renewed or gone takes up to a lease
    or more (a killed process's), before any group is taken: said once, naming the entry
    (``address_waiting``), not left to look like a start that hung."""
    caplog.set_level(logging.INFO, logger="atp_service.app.shared_address")
    store = LogStore(open_nodes(redis_url, 30.0), "wait:", pipeline_max=64)
    admin = aioredis.Redis.from_url(redis_url)
    address, holder, other = "127.0.0.1:1", "127.0.0.1:1|aaaaaaaaaaaa", "127.0.0.1:1|bbbbbbbbbbbb"
    try:
        seconds, _ = await admin.time()
        far = (seconds + 3600) * 1000  # left as it is: neither renewed nor gone until this test removes it
        await admin.zadd("wait:members", {holder: far, other: far})
        waiting = asyncio.ensure_future(refuse_if_shared(store, address, holder, 300))
        await until(lambda: any(getattr(r, "event", None) == "address_waiting" for r in caplog.records),
                    "the wait said", 30)
        assert not waiting.done()
        await admin.zrem("wait:members", other)  # its process's entry gone: the address is this one's alone
        await waiting
        said = [r for r in caplog.records if getattr(r, "event", None) == "address_waiting"]
        assert [r.entries for r in said] == [[other]]  # type: ignore[attr-defined]
    finally:
        await admin.aclose()
        await store.nodes.aclose()


async def test_another_entry_at_its_address_after_the_start_is_said_at_error_once(
        start_process: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A process whose renewals lapsed past a lease looked gone, and one started at its address meanwhile
    serves beside it once it renews again: the start cannot refuse that, so each renewal's read of the
    members says another entry at this address, at ERROR, once per entry (``address_shared``)."""
    caplog.set_level(logging.INFO, logger="atp_service.app.shared_address")
    port = held_port()
    service, _ = await start_process(port=port, host="127.0.0.1", lease_ms=1000)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "address_shared"]  # its own: nothing
    admin = aioredis.Redis.from_url(redis_url)
    try:
        seconds, _ = await admin.time()
        other = f"127.0.0.1:{port}|bbbbbbbbbbbb"
        await admin.zadd("atp:members", {other: (seconds + 3600) * 1000})

        def said() -> list[logging.LogRecord]:
            return [r for r in caplog.records if getattr(r, "event", None) == "address_shared"]

        await until(lambda: bool(said()), "the entry at its address said")
        membership = service.membership
        assert membership is not None
        for _ in range(2):  # two renewals more (each reads the members anew): said no more
            renewals = membership.members
            await until(lambda: membership.members is not renewals, "a renewal")  # noqa: B023 (awaited here)
        assert [(r.levelno, r.entries) for r in said()] == [(logging.ERROR, [other])]  # type: ignore[attr-defined]
        assert owned(service) == set(range(SHARDS))  # said, nothing else changed
    finally:
        await admin.zrem("atp:members", f"127.0.0.1:{port}|bbbbbbbbbbbb")
        await admin.aclose()


async def _members_reads(admin: aioredis.Redis) -> int:
    """ZRANGE calls Redis has run: a start's looks at the members (nothing else in this test reads them so)."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_zrange", {}).get("calls", 0))


async def test_a_start_that_looked_before_its_own_entry_was_in_looks_again_soon(redis_url: str) -> None:
    """A start's look at the members before its own entry is in proves nothing (its first registration not
    answered — a round trip past ``redis_timeout_s`` on a loaded host — and made by its renewals a moment later,
    ``RENEW_RETRY_FIRST_S``), and nothing at its address is there to wait out. It looked again only a sixth of a
    lease later all the same: 100 s at a lease of 600 s, the start held that long for nothing (the membership fuzz
    found such a join "still running 60 s after the faults ended"). It looks again at the renewals' pace."""
    store = LogStore(open_nodes(redis_url, 30.0), "soon:", pipeline_max=64)
    admin = aioredis.Redis.from_url(redis_url)
    address, holder = "127.0.0.1:1", "127.0.0.1:1|aaaaaaaaaaaa"
    try:
        before = await _members_reads(admin)
        waiting = asyncio.ensure_future(refuse_if_shared(store, address, holder, 600_000))  # a look each 100 s
        await until(lambda: _after(_members_reads(admin), before), "the start's first look at the members")
        assert not waiting.done()  # its own entry not in: nothing proven yet
        seconds, _ = await admin.time()
        await admin.zadd("soon:members", {holder: (seconds + 600) * 1000})  # registered by its renewals now
        await until(waiting.done, "the start's next look, its own entry in, far within the 100 s of a sixth of "
                                  "its lease", 30)
        await waiting  # the address is its own: the start goes on
    finally:
        await admin.aclose()
        await store.nodes.aclose()


async def _after(reads: Awaitable[int], before: int) -> bool:
    return await reads > before
