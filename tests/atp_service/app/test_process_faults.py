"""Three service processes sharing one keyspace on a Redis Cluster (``ownership = leases``), under
the faults a fleet meets: an owner killed with kill -9 while orders over groups of different
processes are decided (some callers giving up mid-saga), and an owner paused with SIGSTOP past its
lease. Afterwards nothing any process acknowledged is lost, every order holds all its lines or
none, no unit is held twice, every group answers again (liveness), and a paused owner that wakes
answers nothing — not even a read — for the groups taken from it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from atp_client import RoutedClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.process_helpers import Estate, Process, all_served, group_of, ready, routing
from tests.atp_service.edge.test_api import receipt

SKUS = [f"P{i}" for i in range(18)]
STOCK = 10_000
pytestmark = pytest.mark.slow


@pytest.fixture
async def fleet(cluster_url: str, tmp_path: Path) -> AsyncIterator[tuple[list[Process], Estate]]:
    """Three processes on the keyspace, stocked; each stopped at the end, whatever the test did."""
    processes = [Process(cluster_url, tmp_path / f"process-{i}.log") for i in range(3)]
    try:
        await ready(processes)()
        await routing(processes)
        estate = Estate(processes)
        for sku in SKUS:
            await estate.on_sku(sku, lambda c, s=sku: c.record_events([receipt(f"in-{s}", s, "DC", STOCK)]))
        yield processes, estate
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.proc.pid, signal.SIGCONT)
            await process.close()


async def load(estate: Estate, worker: int, acked: dict[str, int], tried: dict[str, list[str]],
               stop: asyncio.Event) -> None:
    """Single-SKU reserves and orders over two groups (often of two processes), some callers giving
    up after a few milliseconds (R8): whatever they left half-done is decided by the sagas."""
    rng = random.Random(worker)
    n = 0
    while not stop.is_set():
        rid = f"w{worker}-{n}"
        skus = rng.sample(SKUS, 1) if n % 2 else _two_groups(rng)
        tried[rid] = skus
        request = pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=s, location="DC", quantity=1) for s in skus],
                                    ttl=Duration(seconds=3600))
        process = rng.choice([p for p in estate.processes if p.proc.poll() is None])  # it forwards what it does not own
        try:
            answer = await process.client.stub.Reserve(request, timeout=rng.choice((0.002, 0.02, 5.0)))
            acked[rid] = answer.state
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)  # refused, given up or in doubt: checked below by what the log holds
        n += 1


def _two_groups(rng: random.Random) -> list[str]:
    first = rng.choice(SKUS)
    return [first, rng.choice([s for s in SKUS if group_of(s) != group_of(first)])]


async def check_nothing_lost(estate: Estate, acked: dict[str, int], tried: dict[str, list[str]]) -> None:
    """Every acknowledged reservation as acknowledged, every order whole or absent (R2), and each
    unit held at a position held by exactly one reservation's line."""
    held: dict[str, int] = {}
    for rid, skus in tried.items():
        try:
            rec = await estate.on_sku(skus[0], lambda c, r=rid: c.get_reservation(r))  # any process finds it
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            assert rid not in acked, f"acknowledged {rid} lost"
            continue
        if rid in acked:
            assert rec.state == acked[rid], (rid, acked[rid], rec)
        holding = [line.held > 0 for line in rec.lines]
        assert all(holding) or not any(holding), f"{rid} holds in part: {rec.lines}"
        for line in rec.lines:
            held[line.sku] = held.get(line.sku, 0) + line.held
    for sku in SKUS:
        (p,) = await estate.on_sku(sku, lambda c, s=sku: c.availability([(s, "DC")]))
        assert (p.on_hand, p.reserved) == (STOCK, held.get(sku, 0)), (sku, p, held.get(sku))


async def test_an_owner_killed_has_its_groups_taken_over_and_nothing_acknowledged_is_lost(
        fleet: tuple[list[Process], Estate]) -> None:
    processes, estate = fleet
    acked: dict[str, int] = {}
    tried: dict[str, list[str]] = {}
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
        stop.set()  # no caller outlives the test


async def test_an_owner_paused_past_its_lease_is_fenced_and_answers_nothing_for_groups_taken_from_it(
        fleet: tuple[list[Process], Estate]) -> None:
    processes, estate = fleet
    victim = processes[0]
    owners = await routing(processes)
    theirs = [s for s in SKUS if owners[group_of(s)] == victim.address]
    assert theirs, "the paused process owns groups"
    acked: dict[str, int] = {}
    tried: dict[str, list[str]] = {}
    # Calls sent to the victim as it is paused (they wait in its socket until it wakes, past its lease):
    # each ends refused, or acknowledged and durable.
    paused_calls = [asyncio.ensure_future(victim.client.reserve(f"v-{n}", [(theirs[n % len(theirs)], "DC", 1)]))
                    for n in range(20)]
    for n in range(20):
        tried[f"v-{n}"] = [theirs[n % len(theirs)]]
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        others = Estate([p for p in processes if p is not victim])
        for n, sku in enumerate(theirs * 3):  # its groups taken over: the others reserve there meanwhile
            rid = f"t-{n}"
            tried[rid] = [sku]
            acked[rid] = (await others.on_sku(sku, lambda c, r=rid, s=sku: c.reserve(r, [(s, "DC", 1)],
                                                                                   ttl_seconds=3600))).state
        os.kill(victim.proc.pid, signal.SIGCONT)
        for sku in theirs:  # woken, it answers nothing from its old memory, not even a read
            taken = sum(1 for r, skus in tried.items() if r.startswith("t-") and skus == [sku])
            await _refused_or_fresh(victim, sku, taken)
            # Asked plainly: the new owner's answer, forwarded, once it knows who that is (until then, moved).
            (fresh,) = await Estate([victim]).on_sku(sku, lambda c, s=sku: c.availability([(s, "DC")]))
            assert fresh.reserved >= taken, (sku, fresh, taken)
        for n, call in enumerate(paused_calls):
            try:
                acked[f"v-{n}"] = (await call).state
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
        assert victim.proc.poll() is None, "the paused process lives on (it lost groups, not its life)"
        await all_served(estate, SKUS)
        await check_nothing_lost(estate, acked, tried)
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)


async def _refused_or_fresh(victim: Process, sku: str, taken: int) -> None:
    """Asked as a routing client asks (no forwarding), the woken process refuses ``sku`` as moved,
    or, where its balancing has taken the group back since (fenced anew and recovered from the
    log: legitimate, and a matter of timing), answers with every unit the others reserved
    meanwhile. Its memory from before the pause held none of them: a stale read fails either way."""
    request = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=sku, location="DC")])
    try:
        answer = await victim.client.stub.GetAvailability(request, metadata=(("atp-routing", "redirect"),),
                                                          timeout=5)
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        return
    (position,) = answer.positions
    assert position.reserved >= taken, f"{sku}: answered from memory older than the take-over: {position}"


async def _until_more(acked: dict[str, int], n: int) -> None:
    """Until ``n`` more reservations are acknowledged (a count, not a time: a busy host is slow)."""
    target = len(acked) + n
    for _ in range(12_000):
        if len(acked) >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the load did not reach {target} acknowledged reservations")


async def test_routing_redirects_and_forwarding_between_three_processes(fleet: tuple[list[Process], Estate]) -> None:
    processes, _ = fleet
    owners = await routing(processes)
    sku = SKUS[0]
    owner = owners[group_of(sku)]
    other = next(p for p in processes if p.address != owner)
    line = [pb.Line(sku=sku, location="DC", quantity=1)]
    with pytest.raises(grpc.aio.AioRpcError) as moved:  # a caller routing by itself is told where to go
        await other.client.stub.Reserve(pb.ReserveRequest(reservation_id="r-0", lines=line),
                                        metadata=(("atp-routing", "redirect"),), timeout=5)
    assert dict(moved.value.trailing_metadata() or ())["atp-moved"] == f"{group_of(sku)} {owner}"
    assert (await other.client.reserve("r-1", [(sku, "DC", 1)])).state == pb.RESERVATION_STATE_HELD  # forwarded
    a, b = _two_groups(random.Random(7))
    async with RoutedClient([p.address for p in processes]) as client:  # each call straight to its owner
        order = await client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
        assert order.state == pb.RESERVATION_STATE_HELD
        assert (await client.confirm("o-1")).state == pb.RESERVATION_STATE_CONFIRMED
    for process in processes:  # any process answers for the order, wherever its home is
        assert (await process.client.get_reservation("o-1")).state == pb.RESERVATION_STATE_CONFIRMED
