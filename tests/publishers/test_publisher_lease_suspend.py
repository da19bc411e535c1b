"""A delivering publisher whose host was suspended past its lease (C3, C4; R7's lease clock): woken, it must send
nothing more to its destination, where its standby has taken over and may have delivered newer values since. Its
lease is counted on every clock of the host (``LeaseClock``): ``CLOCK_BOOTTIME`` counted the suspend, which
``CLOCK_MONOTONIC`` does not. Real Redis; the suspend is the host's clocks as a suspend leaves them."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from publishers._lease import Lease, LeaseLapsing

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
