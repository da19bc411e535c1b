"""Renewals of a leased process's membership and leases (``renewing.keep_renewing``): a renewal
answered late counts its groups' deadline from when it was sent, and the next is sent a third of a lease
after it was sent (renewals answered slowly lapse no deadline); one that failed extends none; failed
ones are tried again no faster than ``RENEW_RETRY_FIRST_S``; a renewal cancelled in flight leaves no
task behind."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from atp_service import AtpService, EmbeddedRedis
from atp_service.app.balancing import RENEW_RETRY_FIRST_S
from atp_service.app.membership import SAFETY, Membership
from atp_service.storage.leases import RENEW_SCRIPT, GroupLeases
from atp_service.tasks import cancel_and_wait
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

LEASE_MS = 3000
LEASED = {"ownership": "leases", "lease_ms": LEASE_MS, "shards": 4, "input_streams": (), "redis_timeout_s": 10.0}
RENEW = GroupLeases._RENEW.sha.encode()


@pytest.fixture
async def proxied(redis_server: EmbeddedRedis, redis_url: str) -> AsyncIterator[tuple[HoldingProxy, ServiceFactory]]:
    """Services started through a proxy of the session's Redis, on a clean keyspace (``redis_url``): not one
    where the test before left its leases, its member entries and its groups' logs to be waited out."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    url = await proxy.start()
    try:
        async with services_on(url, **LEASED) as start:
            yield proxy, start
    finally:
        proxy.hold()
        proxy.drop()
        await proxy.close()


def _membership(service: AtpService) -> Membership:
    assert service.membership is not None and service.engine is not None
    return service.membership


def _deadlines(service: AtpService) -> dict[int, float]:
    """Each group's local deadline: ``lease_until`` of its actor."""
    assert service.engine is not None
    return {g: service.engine.actors[g].lease_until for g in range(4)}


async def test_a_renewal_answered_late_counts_the_deadline_from_when_it_was_sent(
        proxied: tuple[HoldingProxy, ServiceFactory], redis_url: str) -> None:
    """The groups' deadline is ``SAFETY`` of a lease after the renewal was sent, not after it was answered:
    Redis extends the lease from when the renewal runs there, which may be any time in between."""
    proxy, start = proxied
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = _membership(service)
    await until(lambda: len(membership.leases.held) == 4, "every group taken", 30)
    r = aredis.Redis.from_url(redis_url)
    try:  # loaded: the renewal held is the one that renews (not a NOSCRIPT, sent again on the held connection)
        await r.script_load(RENEW_SCRIPT)
    finally:
        await r.aclose()
    proxy.hold(RENEW)
    await until(lambda: bool(proxy.held), "a renewal held in flight", 30)
    seen = time.monotonic()  # the renewal was sent before this
    before = _deadlines(service)
    proxy.hold()
    held = proxy.held.pop()
    await asyncio.sleep(0.05)  # landed late: Redis extends the lease from now, and answers on the same connection
    held.upstream.write(bytes(held.data))
    await until(lambda: all(_deadlines(service)[g] != before[g] for g in range(4)), "renewed", 30)
    held.upstream.close()  # the connection is of no further use (the proxy would hold whatever it carries next)
    for g, deadline in _deadlines(service).items():
        assert deadline <= seen + LEASE_MS / 1000 * SAFETY, (
            f"group {g}: the deadline counted from when the renewal returned, not when it was sent")


async def test_a_renewal_that_failed_extends_no_deadline_and_is_tried_again(
        proxied: tuple[HoldingProxy, ServiceFactory]) -> None:
    """Renewals of the leases answered by a reset connection: each tried again, none moving a deadline."""
    proxy, start = proxied
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = _membership(service)
    await until(lambda: len(membership.leases.held) == 4, "every group taken", 30)
    failures = membership._metrics.renewal_failures
    proxy.hold(RENEW, reset=True)  # every renewal of the leases: its connection reset, no answer
    await until(lambda: bool(proxy.held), "a renewal held", 30)
    before = _deadlines(service)
    counted = failures._children[()].value
    await until(lambda: failures._children[()].value >= counted + 3, "failed renewals tried again", 30)
    assert len(proxy.held) >= 3
    assert _deadlines(service) == before, "a failed renewal extended a deadline"
    proxy.hold()
    proxy.drop()


async def test_renewals_failing_at_once_do_not_spin(proxied: tuple[HoldingProxy, ServiceFactory]) -> None:
    """Every renewal failing at once (its connection reset as it is sent, as a refused connection would) is
    tried again no sooner than ``RENEW_RETRY_FIRST_S`` later: a bound on the count, not a timing (each try
    follows a sleep at least that long)."""
    proxy, start = proxied
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = _membership(service)
    await until(lambda: len(membership.leases.held) == 4, "every group taken", 30)
    failures = membership._metrics.renewal_failures
    proxy.hold(b"EVALSHA", reset=True)  # every script call's connection reset at once
    await until(lambda: failures._children[()].value >= 1, "a renewal failed", 30)
    counted, since = failures._children[()].value, time.monotonic()
    await asyncio.sleep(2.0)
    tried, took = failures._children[()].value - counted, time.monotonic() - since
    assert tried <= took / RENEW_RETRY_FIRST_S + 2, f"{tried} renewals in {took:.2f}s"
    proxy.hold()
    proxy.drop()


async def test_a_renewal_cancelled_in_flight_leaves_no_task_behind(
        proxied: tuple[HoldingProxy, ServiceFactory]) -> None:
    """The renewing task stopped while its gathered renewal waits for Redis: both parts end with it, the lock
    is free, and no exception is left unretrieved."""
    proxy, start = proxied
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = _membership(service)
    await until(lambda: len(membership.leases.held) == 4, "every group taken", 30)
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _l, ctx: unretrieved.append(ctx))
    try:
        proxy.hold(RENEW)
        await until(lambda: bool(proxy.held), "a renewal held in flight", 30)
        renewing = membership._tasks[0]
        await cancel_and_wait(renewing)
        assert renewing.cancelled()
        left = [t for t in asyncio.all_tasks() if not t.done() and
                getattr(t.get_coro(), "__qualname__", "") in ("Membership._renew_members", "GroupLeases.renew")]
        assert not left, f"left running: {left}"
        assert not membership._renewing.locked()
        gc.collect()
        await asyncio.sleep(0)
        assert not unretrieved, unretrieved
    finally:
        loop.set_exception_handler(None)
        proxy.hold()
        proxy.drop()


async def test_renewals_answered_slowly_keep_every_deadline_ahead(
        proxied: tuple[HoldingProxy, ServiceFactory]) -> None:
    """Every renewal answered ``SLOW_S`` after Redis ran it (an event loop lagging under load): the next is
    sent a third of a lease after this one was sent, not after it was answered, so no group's deadline
    lapses while Redis holds every lease. Paced from the answer, each answer's time counted twice: 0.9 s +
    1 s + 0.9 s past a deadline 2.4 s after the send, and the groups were refused ``GROUP_MOVED`` for 0.4 s
    a renewal though no group moved."""
    _, start = proxied
    service, _ = await start(port=held_port(), host="127.0.0.1")
    membership = _membership(service)
    await until(lambda: len(membership.leases.held) == 4, "every group taken", 30)
    slow_s = 0.9  # under the 2.4 s a deadline runs past its send, less the 1 s between renewals
    assert slow_s < LEASE_MS / 1000 * SAFETY - LEASE_MS / 3000
    renew = membership.leases.renew

    async def answered_late() -> dict[int, str]:
        lost = await renew()
        await asyncio.sleep(slow_s)
        return lost

    membership.leases.renew = answered_late  # type: ignore[method-assign]
    lapsed: list[float] = []
    watched_until = time.monotonic() + 5 * LEASE_MS / 1000 / 3  # five renewals' worth
    while (now := time.monotonic()) < watched_until:
        behind = now - min(_deadlines(service).values())
        if behind > 0:
            lapsed.append(behind)
        await asyncio.sleep(0.01)
    membership.leases.renew = renew  # type: ignore[method-assign]
    assert len(membership.leases.held) == 4, "a lease was lost"
    assert not lapsed, f"a deadline lapsed while Redis held its lease (by up to {max(lapsed):.2f}s)"
