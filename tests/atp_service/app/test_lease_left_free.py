"""A group left free by a live process that takes none (``ownership = leases``): an earlier release's
process in a rolling upgrade, whose every balance fails yet which stays registered and renews."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app.balancing import address_of
from atp_service.tasks import cancel_and_wait
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS = 6


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Leases long enough for a busy host's stalls (a lapsed one moves a group mid-test)."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


async def test_a_group_given_up_by_a_process_that_takes_none_is_taken_by_one_at_its_share(
        start: ServiceFactory) -> None:
    """Three processes at their share (2 of 6 groups each); one stops balancing but stays registered,
    then gives a group up (a shard that stopped working): the two others, each at its share, left the
    group to nobody, and its SKUs answered no caller for as long as that process lived."""
    running = [await start(port=held_port(), host="127.0.0.1") for _ in range(3)]
    services = [s for s, _ in running]
    await until(lambda: sorted(len(owned(s)) for s in services) == [2, 2, 2], "the groups spread, 2 each", 60)
    stuck, client = running[2]
    assert stuck.membership is not None and stuck.engine is not None
    group = min(owned(stuck))
    sku = next(s for s in (f"k{i}" for i in range(256)) if zlib.crc32(s.encode()) % SHARDS == group)
    assert (await client.record_events([receipt("in-1", sku, "DC", 5)]))[0].outcome == pb.FACT_OUTCOME_APPLIED
    # Its balance: every turn of an earlier release's fails; it renews on. Cancelled until it has ended: one
    # cancel() can be lost on Python 3.11 (cancel_and_wait), and a balance running on took the group itself.
    await cancel_and_wait(stuck.membership._tasks[1])
    stuck.membership.failed(stuck.engine.actors[group])  # the group handed back, to whoever takes it next
    healthy = services[:2]
    await until(lambda: any(group in owned(s) for s in healthy), f"group {group} taken by a process at its share", 60)
    taker, taker_client = next(p for p in running[:2] if group in owned(p[0]))
    (position,) = await taker_client.availability([(sku, "DC")])  # recovered from the group's log
    assert position.on_hand == 5
    assert (await taker_client.reserve("r-1", [(sku, "DC", 2)])).state == pb.RESERVATION_STATE_HELD
    assert taker.membership is not None and taker.membership.watch.out == {stuck.membership.address}
    assert taker.metrics.registry.get_sample_value("atp_processes_not_taking") == 1


MANUAL_TURNS_LEASE_MS = 6000


@pytest.fixture
async def start_manual(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[ServiceFactory]:
    """Processes on ``request.param`` groups whose balancing turns the test drives (``driven``).
    Leases of 6 s: a stall of a busy host must not lapse one; turns of 200 ms until then."""
    async with services_on(redis_url, ownership="leases", lease_ms=MANUAL_TURNS_LEASE_MS, balance_ms=200,
                           shards=request.param, input_streams=()) as start:
        yield start


async def driven(start: ServiceFactory, processes: int, spread: list[int]) -> list[AtpService]:
    """``processes`` started; once their groups spread as ``spread`` (sorted counts), their own
    balancing loops stopped: the turns from here on are the test's, one after another."""
    services = [(await start(port=held_port(), host="127.0.0.1"))[0] for _ in range(processes)]
    await until(lambda: sorted(len(owned(s)) for s in services) == spread, "the groups spread", 60)
    for service in services:
        assert service.membership is not None
        await cancel_and_wait(service.membership._tasks[1])
    return services


@pytest.mark.parametrize("start_manual", [17], indirect=True)
async def test_every_group_a_graceful_stop_hands_over_is_taken_at_the_next_turn_of_each_process(
        start_manual: ServiceFactory) -> None:
    """Four processes on 17 groups (5, 4, 4, 4); one stops gracefully. The three left, each below the
    floor of its new share (5 of 17 over three), each took only up to the floor while another was
    below it: a group the stop handed over stayed free past every one's next turn."""
    services = await driven(start_manual, 4, [4, 4, 4, 5])
    stopper = next(s for s in services if len(owned(s)) == 4)
    await stopper.stop(grace_s=0.1)
    rest = [s for s in services if s is not stopper]
    for service in rest:
        assert service.membership is not None
        await service.membership.renew()  # the stopper's entry gone from the members it reads
        await service.membership.balance()
    assert sorted(len(owned(s)) for s in rest) == [5, 6, 6], "a group handed over left free past each one's turn"
    for service in rest:
        assert service.membership is not None and not service.membership.watch.out


@pytest.mark.parametrize("start_manual", [16], indirect=True)
async def test_the_groups_a_graceful_stop_hands_over_are_taken_while_it_hands_over_the_rest(
        start_manual: ServiceFactory) -> None:
    """Three processes on 16 groups (6, 5, 5); one of 5 stops gracefully, its hand-overs slow (a big
    group's final snapshot). Still registered while it handed its groups over, below its floor, it had
    what it lacked kept free for it: the groups it had handed over waited for the end of its stop,
    though a process below its share could serve them."""
    services = await driven(start_manual, 3, [5, 5, 6])
    stopper = next(s for s in services if len(owned(s)) == 5)
    assert stopper.engine is not None and stopper.membership is not None
    last, gate, at_gate = max(owned(stopper)), asyncio.Event(), asyncio.Event()
    vacate = stopper.engine.vacate

    async def slow_vacate(group: int, snapshot: bool) -> None:
        if group == last:
            at_gate.set()
            await gate.wait()
        await vacate(group, snapshot=snapshot)

    stopper.engine.vacate = slow_vacate  # type: ignore[method-assign]
    stopping = asyncio.create_task(stopper.stop(grace_s=0.1))
    try:
        await asyncio.wait_for(at_gate.wait(), 30)
        rest = [s for s in services if s is not stopper]
        for service in rest:
            assert service.membership is not None
            await service.membership.renew()
            await service.membership.balance()
        assert sorted(len(owned(s)) for s in rest) == [6, 6], "a group handed over left free while the stop went on"
        assert not any(stopper.membership.address in {address_of(m) for m in s.membership.members} for s in rest
                       if s.membership is not None), "a stopping process still registered"
    finally:
        gate.set()
        await stopping
    for service in rest:  # no renewal first: the stopper left the members before its hand-overs
        assert service.membership is not None
        await service.membership.balance()
    assert sorted(len(owned(s)) for s in rest) == [8, 8]


@pytest.fixture
async def start_7(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=7,
                           input_streams=()) as start:
        yield start


async def test_a_group_handed_over_while_two_processes_taking_none_hold_their_floor_is_taken(
        start_7: ServiceFactory) -> None:
    """Five processes on 7 groups (2, 2, 1, 1, 1); two of those holding one stop balancing but stay
    registered (an earlier release's in a rolling upgrade), the third stops gracefully. The two left
    at their share (2 of 7 over four) and the two at the floor left its group to nobody for as long
    as those two lived: only a process below the floor was counted out."""
    running = [await start_7(port=held_port(), host="127.0.0.1") for _ in range(5)]
    services = [s for s, _ in running]
    await until(lambda: sorted(len(owned(s)) for s in services) == [1, 1, 1, 2, 2], "the groups spread", 60)
    x, y, stopper = [s for s in services if len(owned(s)) == 1]
    for stuck in (x, y):
        assert stuck.membership is not None
        await cancel_and_wait(stuck.membership._tasks[1])  # every balance of an earlier release's fails; renews on
    (group,) = owned(stopper)
    # Named before the stop: one of them takes the group once it has counted the two out, which a
    # busy host's stall of the stop's last steps let happen first — then holding 3, not 2.
    healthy = [s for s in services if s not in (x, y, stopper)]
    await stopper.stop(grace_s=0.1)
    await until(lambda: any(group in owned(s) for s in healthy), f"group {group} taken by a process at its share", 60)
    assert x.membership is not None and y.membership is not None
    outs = [s.membership.watch.out for s in healthy if s.membership is not None]
    assert {x.membership.address, y.membership.address} in outs, outs
