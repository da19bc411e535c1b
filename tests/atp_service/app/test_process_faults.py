"""Three service processes sharing one keyspace on a Redis Cluster (``ownership = leases``), under
the faults a fleet meets: an owner killed with kill -9, and an owner paused with SIGSTOP past its
lease. Afterwards nothing any process acknowledged is lost, no unit is held twice, every group
answers again (liveness), and a paused owner that wakes answers nothing — not even a read — for
the groups taken from it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from tests.atp_service.app.process_helpers import Estate, Process, all_served, group_of, ready, routing
from tests.atp_service.edge.test_api import receipt

SKUS = [f"P{i}" for i in range(18)]
STOCK = 10_000
pytestmark = pytest.mark.slow


async def started(cluster_url: str, tmp_path: Path, n: int = 3) -> tuple[list[Process], Estate]:
    processes = [Process(cluster_url, tmp_path / f"process-{i}.log") for i in range(n)]
    await ready(processes)()
    await routing(processes)
    estate = Estate(processes)
    for sku in SKUS:
        await estate.on_sku(sku, lambda c, s=sku: c.record_events([receipt(f"in-{s}", s, "DC", STOCK)]))
    return processes, estate


async def load(estate: Estate, worker: int, acked: dict[str, str], tried: dict[str, str], stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        rid, sku = f"w{worker}-{n}", SKUS[(worker * 7 + n) % len(SKUS)]
        tried[rid] = sku
        try:
            await estate.on_sku(sku, lambda c, r=rid, s=sku: c.reserve(r, [(s, "DC", 1)], ttl_seconds=3600))
            acked[rid] = sku
        except (grpc.aio.AioRpcError, AssertionError):
            pass  # refused or in doubt: checked below by what the log holds
        n += 1


async def holds(estate: Estate, tried: dict[str, str]) -> dict[str, int]:
    """Per SKU, the units held by the reservations that exist (each looked up at its group's owner)."""
    held: dict[str, int] = {}
    for rid, sku in tried.items():
        try:
            rec = await estate.on_sku(sku, lambda c, r=rid: c.get_reservation(r))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            continue
        held[sku] = held.get(sku, 0) + sum(line.held for line in rec.lines)
    return held


async def check_nothing_lost(estate: Estate, acked: dict[str, str], tried: dict[str, str]) -> None:
    for rid, sku in acked.items():  # every acknowledged reservation is there
        rec = await estate.on_sku(sku, lambda c, r=rid: c.get_reservation(r))
        assert sum(line.held for line in rec.lines) == 1, (rid, rec)
    held = await holds(estate, tried)
    for sku in SKUS:  # each unit held at a position is held by exactly one reservation
        (p,) = await estate.on_sku(sku, lambda c, s=sku: c.availability([(s, "DC")]))
        assert (p.on_hand, p.reserved) == (STOCK, held.get(sku, 0)), (sku, p, held.get(sku))


async def test_an_owner_killed_has_its_groups_taken_over_and_nothing_acknowledged_is_lost(
        cluster_url: str, tmp_path: Path) -> None:
    processes, estate = await started(cluster_url, tmp_path)
    acked: dict[str, str] = {}
    tried: dict[str, str] = {}
    stop = asyncio.Event()
    try:
        workers = [asyncio.ensure_future(load(estate, w, acked, tried, stop)) for w in range(6)]
        await _until_more(acked, 60)
        victim = processes[0]
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.proc.wait)
        await all_served(estate, SKUS)
        print(f"every group served again {time.monotonic() - killed_at:.2f}s after kill -9 of an owner "
              f"(lease {os.environ.get('ATP_LEASE_MS', '1000')} ms)")
        await _until_more(acked, 30)  # the load goes on through the two left
        stop.set()
        await asyncio.gather(*workers)
        await check_nothing_lost(estate, acked, tried)
    finally:
        for process in processes:
            await process.close()


async def test_an_owner_paused_past_its_lease_is_fenced_and_answers_nothing_for_groups_taken_from_it(
        cluster_url: str, tmp_path: Path) -> None:
    processes, estate = await started(cluster_url, tmp_path)
    victim = processes[0]
    owners = await routing(processes)
    theirs = [s for s in SKUS if owners[group_of(s)] == victim.address]
    assert theirs, "the paused process owns groups"
    acked: dict[str, str] = {}
    tried: dict[str, str] = {}
    # Calls the victim is deciding as it is paused: each ends refused, or acknowledged and durable.
    paused_calls = [asyncio.ensure_future(victim.client.reserve(f"v-{n}", [(theirs[n % len(theirs)], "DC", 1)]))
                    for n in range(20)]
    for n in range(20):
        tried[f"v-{n}"] = theirs[n % len(theirs)]
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        others = Estate([p for p in processes if p is not victim])
        for n, sku in enumerate(theirs * 3):  # its groups taken over: the others reserve there meanwhile
            rid = f"t-{n}"
            tried[rid] = sku
            await others.on_sku(sku, lambda c, r=rid, s=sku: c.reserve(r, [(s, "DC", 1)], ttl_seconds=3600))
            acked[rid] = sku
        os.kill(victim.proc.pid, signal.SIGCONT)
        for sku in theirs:  # woken, it answers nothing for them, not even a read of its old numbers
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await victim.client.availability([(sku, "DC")])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        for n, call in enumerate(paused_calls):
            try:
                await call
                acked[f"v-{n}"] = tried[f"v-{n}"]
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
        assert victim.proc.poll() is None, "the paused process lives on (it lost groups, not its life)"
        await all_served(estate, SKUS)
        await check_nothing_lost(estate, acked, tried)
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
        for process in processes:
            await process.close()


async def _until_more(acked: dict[str, str], n: int) -> None:
    """Until ``n`` more reservations are acknowledged (a count, not a time: a busy host is slow)."""
    target = len(acked) + n
    for _ in range(12_000):
        if len(acked) >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the load did not reach {target} acknowledged reservations")
