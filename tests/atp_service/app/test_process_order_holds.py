"""Orders over groups of different service processes (``ownership = leases``) on one real Redis,
their coordinating process killed with kill -9 at each step of a saga — after its parts are made,
after its decision is recorded, in the middle of a Confirm or a Release. Once the survivors have
taken the dead process's groups over and the order's TTL has passed, every unit is free again (R2:
no hold outlives its order's decision or TTL), a confirmed order is committed whole or not at all,
and every group answers (R8)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.process_helpers import SHARDS, Estate, Process, all_served, group_of, ready, routing
from tests.atp_service.edge.test_api import receipt
from tests.waiting import until

LEASE_MS = 3000
"""Long enough that a process stopped for a moment keeps its groups, short enough to take over soon."""
BALANCE_MS = 250
"""A balance four times a second, not a third of the lease (1 s): the fleet's groups spread, and a killed or
paused process's groups are taken once its leases lapse, within a quarter of a second instead of a second or
more a step (each test waited out several); the leases, and so what a pause or a kill costs, are the same."""
STOCK = 10
SKUS = [f"H{i}" for i in range(24)]
pytestmark = pytest.mark.slow


class LeasedProcess(Process):
    """An ``atp-service serve`` process of a keyspace on a single Redis (not a cluster)."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", self._cluster_url, "--host", "127.0.0.1",
               "--port", str(self.port), "--metrics-port", "-1", "--no-demo", "--auth", "off",
               "--shards", str(SHARDS), "--ownership", "leases", "--lease-ms", str(LEASE_MS),
               "--balance-ms", str(BALANCE_MS)]
        env = {**os.environ, "ATP_INPUT_STREAMS": "", "ATP_MAINTENANCE_INTERVAL_MS": "50"}
        return subprocess.Popen(cmd, stdout=self._log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)


@pytest.fixture
async def fleet(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[list[Process], Estate, dict[int, str]]]:
    processes: list[Process] = [LeasedProcess(redis_url, tmp_path / f"process-{i}.log") for i in range(3)]
    try:
        await ready(processes)()
        owners = await routing(processes)
        estate = Estate(processes)
        for sku in SKUS:
            await estate.on_sku(sku, functools.partial(_stock, sku))
        yield processes, estate, owners
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.proc.pid, signal.SIGCONT)
            await process.close()


async def _stock(sku: str, client: AtpClient) -> None:
    await client.record_events([receipt(f"in-{sku}", sku, "DC", STOCK)])


async def _position_of(sku: str, client: AtpClient) -> pb.Availability:
    (p,) = await client.availability([(sku, "DC")])
    return p


def order_over(owners: dict[int, str], processes: list[Process]) -> tuple[Process, Process, list[str]]:
    """(the coordinator: the owner of the order's home group, a process owning another of its groups,
    two SKUs): the home is the lowest group of the order's lines."""
    for low in SKUS:
        for high in SKUS:
            if group_of(low) < group_of(high) and owners[group_of(low)] != owners[group_of(high)]:
                home = next(p for p in processes if p.address == owners[group_of(low)])
                other = next(p for p in processes if p.address == owners[group_of(high)])
                return home, other, [low, high]
    raise AssertionError("no two SKUs in groups of different processes")


async def position(process: Process, sku: str) -> pb.Availability:
    (p,) = await process.client.availability([(sku, "DC")])
    return p


async def free_everywhere(estate: Estate, skus: list[str]) -> bool:
    """Every unit of ``skus`` free: nothing reserved nor committed (each asked at its group's owner)."""
    for sku in skus:
        p = await estate.on_sku(sku, functools.partial(_position_of, sku))
        if (p.reserved, p.committed, p.available) != (0, 0, STOCK):
            return False
    return True


async def reserve(process: Process, rid: str, skus: list[str], ttl_s: int = 1) -> asyncio.Task[Any]:
    """The Reserve sent, its answer awaited in a task (the caller may be killed before it answers)."""
    return asyncio.ensure_future(process.client.reserve(rid, [(s, "DC", 2) for s in skus], ttl_seconds=ttl_s))


def kill(process: Process) -> None:
    os.kill(process.proc.pid, signal.SIGKILL)
    process.proc.wait(10)


async def settled_state(estate: Estate, rid: str, skus: list[str]) -> pb.Reservation:
    async def read(client: AtpClient) -> pb.Reservation:
        return await client.get_reservation(rid)
    return await estate.on_sku(skus[0], read)


async def wait_answered(call: asyncio.Task[Any]) -> None:
    """The answer of a call whose process was killed: any, or a refusal (the test reads the state)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call


async def test_coordinator_killed_after_its_parts_are_made_holds_nothing_after_the_ttl(
        fleet: tuple[list[Process], Estate, dict[int, str]]) -> None:
    processes, estate, owners = fleet
    home, other, skus = order_over(owners, processes)
    os.kill(other.proc.pid, signal.SIGSTOP)  # the step to its part waits: the home's own part is made
    call = await reserve(home, "o-parts", skus)
    await until(lambda: _reserved(home, skus[0], 2), "the home's part held", 90, every_s=0.05)
    kill(home)
    os.kill(other.proc.pid, signal.SIGCONT)
    await wait_answered(call)
    await until(lambda: free_everywhere(estate, skus), "every unit free after the order's TTL", 90, every_s=0.05)
    order = await settled_state(estate, "o-parts", skus)
    assert all(line.held == 0 and line.committed == 0 for line in order.lines), order
    await all_served(estate, SKUS)


async def test_coordinator_killed_after_the_decision_frees_the_order_at_its_ttl(
        fleet: tuple[list[Process], Estate, dict[int, str]]) -> None:
    processes, estate, owners = fleet
    home, _, skus = order_over(owners, processes)
    held = await (await reserve(home, "o-held", skus))
    assert held.state == pb.RESERVATION_STATE_HELD, held
    kill(home)
    await until(lambda: free_everywhere(estate, skus), "every unit free after the order's TTL", 90, every_s=0.05)
    assert (await settled_state(estate, "o-held", skus)).state == pb.RESERVATION_STATE_EXPIRED
    await all_served(estate, SKUS)


@pytest.mark.parametrize("change", ["confirm", "release"])
async def test_coordinator_killed_in_the_middle_of_changes_leaves_each_order_whole(
        fleet: tuple[list[Process], Estate, dict[int, str]], change: str) -> None:
    """Changes sent a few milliseconds apart, the coordinator killed among them: each order is
    changed in every part or in none, and whatever is not confirmed is free after its TTL."""
    processes, estate, owners = fleet
    home, _, skus = order_over(owners, processes)
    rids = [f"o-{change}-{n}" for n in range(ORDERS)]
    for rid in rids:
        held = await home.client.reserve(rid, [(s, "DC", 1) for s in skus], ttl_seconds=2)
        assert held.state == pb.RESERVATION_STATE_HELD, held
    calls = [asyncio.ensure_future(_later(n * 0.003, getattr(home.client, change), rid)) for n, rid in enumerate(rids)]
    await asyncio.sleep(ORDERS * 0.003 / 2)
    kill(home)
    for call in calls:
        await wait_answered(call)
    confirmed = 0
    for rid in rids:
        order = await settled_state(estate, rid, skus)
        committed = [line.committed for line in order.lines]
        assert committed in ([1, 1], [0, 0]), (rid, order)  # R2: confirmed whole or not at all
        confirmed += committed == [1, 1]
        assert (order.state == pb.RESERVATION_STATE_CONFIRMED) == (committed == [1, 1]), (rid, order)
    assert change == "confirm" or confirmed == 0
    await until(lambda: _only_committed(estate, skus, confirmed), "every unit not confirmed free after the TTL", 90,
                every_s=0.05)
    await all_served(estate, SKUS)


ORDERS = 8


async def _later(delay_s: float, call: Callable[[str], Awaitable[Any]], rid: str) -> Any:
    await asyncio.sleep(delay_s)
    return await call(rid)


async def _only_committed(estate: Estate, skus: list[str], units: int) -> bool:
    for sku in skus:
        p = await estate.on_sku(sku, functools.partial(_position_of, sku))
        if (p.reserved, p.committed) != (0, units):
            return False
    return True


async def _reserved(process: Process, sku: str, units: int) -> bool:
    return (await position(process, sku)).reserved == units


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_coordinator_killed_or_paused_among_reserves_leaves_no_hold_past_the_ttl(
        fleet: tuple[list[Process], Estate, dict[int, str]], fault: str) -> None:
    """Reserves sent a few milliseconds apart, the coordinator killed (or paused past its lease, then
    woken) among them: each order holds every line or none, and nothing is held past its TTL."""
    processes, estate, owners = fleet
    home, _, skus = order_over(owners, processes)
    rids = [f"o-{fault}-{n}" for n in range(ORDERS)]
    calls = [asyncio.ensure_future(_later(n * 0.003, lambda rid: home.client.reserve(
        rid, [(s, "DC", 1) for s in skus], ttl_seconds=1), rid)) for n, rid in enumerate(rids)]
    await asyncio.sleep(ORDERS * 0.003 / 2)
    if fault == "kill":
        kill(home)
    else:
        os.kill(home.proc.pid, signal.SIGSTOP)
        await until(lambda: _taken_from(processes, home), "the paused process's groups taken", 90, every_s=0.05)
        os.kill(home.proc.pid, signal.SIGCONT)
    for call in calls:
        await wait_answered(call)
    await until(lambda: free_everywhere(estate, skus), "every unit free after the orders' TTL", 90, every_s=0.05)
    for rid in rids:
        with contextlib.suppress(grpc.aio.AioRpcError):  # never opened: not found
            order = await settled_state(estate, rid, skus)
            assert all(line.held == 0 and line.committed == 0 for line in order.lines), (rid, order)
    await all_served(estate, SKUS)


async def _taken_from(processes: list[Process], paused: Process) -> bool:
    others = [p for p in processes if p is not paused]
    try:
        tables = [await p.client.stub.GetRouting(pb.GetRoutingRequest(), timeout=5) for p in others]
    except grpc.aio.AioRpcError:
        return False
    return all(r.address and r.address != paused.address for t in tables for r in t.groups)
