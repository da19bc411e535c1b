"""A delivering publisher whose host was suspended past its lease (C3, C4; R7's lease clock): woken, it must send
nothing more to its destination, where its standby has taken over and may have delivered newer values since. Its
lease is counted on every clock of the host (``LeaseClock``): ``CLOCK_BOOTTIME`` counted the suspend, which
``CLOCK_MONOTONIC`` does not. Real Redis; the suspend is the host's clocks as a suspend leaves them."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from publishers import _holding
from publishers._config import PublisherConfig
from publishers._holding import Holding
from publishers._lease import Lease, LeaseLapsing
from publishers._metrics import PublisherMetrics

KEY = "atp:{avail}:web:lease:webhook"
LEASE_S, SEND_TIMEOUT_S = 5.0, 0.3


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux's")
async def test_a_holder_woken_from_a_suspend_past_its_lease_sends_nothing_more(
        client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    await client.delete(KEY)
    old, standby = Lease(client, KEY, LEASE_S, SEND_TIMEOUT_S), Lease(client, KEY, LEASE_S, SEND_TIMEOUT_S)
    assert await old.take()
    old.check_send()  # held: it may send
    real = time.clock_gettime
    # The host suspended twice the lease: CLOCK_BOOTTIME counted it, CLOCK_MONOTONIC (and asyncio) did not; Redis's
    # copy of the lease ran out meanwhile (deleted here as its expiry would) and the standby took it over.
    monkeypatch.setattr(time, "clock_gettime",
                        lambda clock: real(clock) + (2 * LEASE_S if clock == time.CLOCK_BOOTTIME else 0.0))
    assert await client.delete(KEY) == 1
    assert await standby.take(), "the standby takes the lapsed lease"
    assert not old.covers(SEND_TIMEOUT_S), "woken, the old holder counts on a lease the standby holds"
    with pytest.raises(LeaseLapsing):
        old.check_send()  # before a request to the destination: nothing is sent
    standby.check_send()  # the new holder sends


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux's")
async def test_a_holder_suspended_after_its_wall_clock_was_stepped_ahead_and_put_right_sends_nothing_more(
        client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder's wall clock stepped ten minutes ahead (the holding ended early, taken again at the renewal) and
    put right; then its host suspended twice the lease: woken, it sends nothing. The lead shared by every clock
    stayed ten minutes up, and the suspend, shorter, moved the lease clock not at all: it sent beside the standby."""
    await client.delete(KEY)
    wall = {"ahead_s": 0.0}
    real_time, real_gettime = time.time, time.clock_gettime
    monkeypatch.setattr(time, "time", lambda: real_time() + wall["ahead_s"])  # as the lease clocks built next read it
    old, standby = Lease(client, KEY, LEASE_S, SEND_TIMEOUT_S), Lease(client, KEY, LEASE_S, SEND_TIMEOUT_S)
    assert await old.take()
    wall["ahead_s"] = 600.0
    assert not old.covers(SEND_TIMEOUT_S), "the wall clock stepped ahead: the lease shortened"
    wall["ahead_s"] = 0.0
    assert await old.renew()
    old.check_send()  # put right, renewed: it may send
    suspended_s = 2 * LEASE_S  # counted by CLOCK_BOOTTIME and the wall clock, not CLOCK_MONOTONIC
    monkeypatch.setattr(time, "clock_gettime",
                        lambda clock: real_gettime(clock) + (suspended_s if clock == time.CLOCK_BOOTTIME else 0.0))
    wall["ahead_s"] = suspended_s
    assert await client.delete(KEY) == 1  # run out in Redis meanwhile; the standby took it
    assert await standby.take()
    assert not old.covers(SEND_TIMEOUT_S), "woken, the old holder counts on a lease the standby holds"


async def test_a_holder_counts_on_no_more_than_four_fifths_of_its_lease_from_the_send(client: aioredis.Redis) -> None:
    """Redis ends the lease by its own clock, which may run ahead of the holder's host or be stepped forward: the
    holder counts on 80 % of it from the renewal's send, as the service's groups do (R7's ``SAFETY``), and sends
    nothing it could still be sending when a standby may take over."""
    await client.delete(KEY)
    now = [100.0]
    lease = Lease(client, KEY, LEASE_S, SEND_TIMEOUT_S, clock=lambda: now[0])
    assert await lease.take()
    now[0] += 0.8 * LEASE_S - 2 * SEND_TIMEOUT_S
    lease.check_send()  # a request that ends well within four fifths of the lease
    now[0] += SEND_TIMEOUT_S + 0.01
    assert not lease.covers(SEND_TIMEOUT_S), "a request ending past four fifths of the lease was allowed"
    with pytest.raises(LeaseLapsing):
        lease.check_send()


async def test_one_renewal_may_fail_outright_at_the_shortest_lease_and_sends_go_on(client: aioredis.Redis) -> None:
    """At the shortest lease a request allows (3 x ``send_timeout_s``), counted on for four fifths of it: a renewal
    that fails outright (Redis away) leaves the holder covered for a whole request until the next one is sent, where
    renewed every third of the lease it stopped sending (lost the lease) at every Redis hiccup."""
    await client.delete(KEY)
    now = [100.0]
    lease = Lease(client, KEY, 3 * SEND_TIMEOUT_S, SEND_TIMEOUT_S, clock=lambda: now[0])
    assert await lease.take()
    now[0] += 2 * lease.renew_every_s  # the first renewal failed; the second is due now
    assert lease.covers(SEND_TIMEOUT_S), "a holder whose one renewal failed stopped sending before the next"
    assert await lease.renew()
    lease.check_send()


async def test_renewals_each_answered_a_fifth_of_the_lease_late_leave_sends_going(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At the shortest lease a request allows (3 x ``send_timeout_s``), each renewal answered a fifth of the lease
    after its send: the holder must stay covered for a whole request at every moment, the next renewal's answer
    included. Defect (3bc976a2, whose docs said a quarter): ``Holding.keep`` slept a fifth of the lease after each
    renewal was *answered*, so a renewal's delay counted twice, and the holder stopped sending (lease lost) with every
    renewal answered after 2/15 of the lease; renewals are due a fifth of the lease after the last one was *sent*."""
    lease_s, send_s = 3 * SEND_TIMEOUT_S, SEND_TIMEOUT_S
    delay_s, now, covered = lease_s / 5, [100.0], []

    class SlowRedis:
        async def set(self, *_args: object, **_kw: object) -> bool:
            return True

        async def eval(self, *_args: object) -> int:
            now[0] += delay_s  # the answer comes a fifth of the lease after the send
            covered.append(holding.lease.covers(send_s))  # the moment just before it arrives
            return int(len(covered) < 8)  # the eighth: another holds it (keep ends)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    holding = Holding(PublisherConfig(channel="web", lease_s=lease_s, send_timeout_s=send_s), SlowRedis(),
                      PublisherMetrics(CollectorRegistry()), on_lost=lambda: None)
    holding.lease = Lease(SlowRedis(), KEY, lease_s, send_s, clock=lambda: now[0])
    assert await holding.lease.take()
    monkeypatch.setattr(_holding, "asyncio", SimpleNamespace(sleep=sleep))
    await holding.keep()
    assert len(covered) == 8
    assert all(covered[:-1]), f"a holder whose renewals were answered in a fifth of the lease stopped: {covered}"
