"""ExplainAvailability under leases of a position held by a plain reservation spanning shards left by the single
writer (docs/OPERATIONS.md): its record lives at its home group only, so the owner of its other group, which
counts its units in ``reserved``, cannot list it. Two real processes on a real Redis."""

from __future__ import annotations

import asyncio

import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.balancing import preference
from atp_service.tasks import cancel_and_wait
from tests.atp_service.app.test_leases_plain_spanning_holds import _moved_to_leases
from tests.atp_service.app.test_processes import members_read, owned
from tests.atp_service.engine.test_expiry_races import _spanning_hold, _started
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until


async def test_an_explain_whose_hold_is_recorded_at_another_process_s_group_says_its_holds_are_not_all_listed(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: r1 (2 units of ``a``, 3 of ``b``) is recorded at its home group, another process than ``b``'s
    owner. ``b``'s owner explained the position with ``reserved`` 3 and no hold at all, and nothing saying that
    a hold was left out (``holds_truncated`` false): the analyst chasing those units — the very ones that
    cannot expire under leases — was told no reservation holds them. One process holding both groups lists
    r1. Now the answer says its holds do not account for every unit (``holds_elsewhere``)."""
    clock, service, client, _ = await _started(start_service, 2)
    a, b = await _spanning_hold(service, client)
    assert service.engine is not None
    home = service.engine.home_of("r1")
    assert home is not None
    other_sku, other_held = (b, 3) if service.engine.place(a) == home else (a, 2)
    await service.stop(grace_s=0.1)
    redis.Redis.from_url(redis_url).hset("atp:meta", "ownership", "leases")
    port = next(p for p in iter(held_port, 0) if preference(f"127.0.0.1:{p}", home) > preference(f"127.0.0.1:{p}",
                                                                                                 1 - home))
    leased = {"clock": clock, "shards": 2, "maintenance_interval_ms": 3_600_000, "ownership": "leases",
              "lease_ms": 5_000, "balance_ms": 200, "host": "127.0.0.1", "input_streams": ()}
    owner, _ = await start_service(port=port, **leased)  # alone: both groups
    async with AtpClient(f"127.0.0.1:{owner.port}", timeout_s=5) as at_owner:
        alone = await at_owner.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=other_sku, location="S1"))
    assert [(h.reservation_id, h.held) for h in alone.holds] == [("r1", other_held)], alone
    assert not alone.holds_elsewhere
    other, other_client = await start_service(port=held_port(), **leased)
    await members_read([(owner, at_owner), (other, other_client)])  # the newcomer seen now, not at a renewal
    await until(lambda: [owned(owner), owned(other)] == [{home}, {1 - home}],
                "the owner keeps r1's home group (its preference), the other process takes the other")
    async with AtpClient(f"127.0.0.1:{other.port}", timeout_s=5) as at_other:
        explained = await at_other.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=other_sku,
                                                                                           location="S1"))
    assert explained.availability.reserved == other_held, explained
    assert list(explained.holds) == [] and not explained.holds_truncated  # r1 is not listed here...
    assert explained.holds_elsewhere, "...and the answer says that a hold's units are not listed"


async def test_an_explain_lists_no_hold_from_a_group_whose_lease_may_have_run_out_R7(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: one process serving both groups, r1's home group past its lease by this process's clock (renewals
    not getting through: another process may own it by now) while ``b``'s group is still its own. Explaining
    ``b`` listed r1 from the home group's memory, a group this process no longer answers for (R7: reads
    included). Now only served groups' holds are listed, and the answer says one's units are not."""
    _, service, client, engine, (a, b) = await _moved_to_leases(start_service, redis_url)
    home = engine.home_of("r1")
    assert home is not None and service.membership is not None
    other_sku, other_held = (b, 3) if engine.place(a) == home else (a, 2)
    await asyncio.gather(*(cancel_and_wait(task) for task in service.membership._tasks))  # renewals stop
    engine.actors[home].lease_until = 0.0  # its last renewal older than a lease, by its own clock
    explained = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=other_sku, location="S1"))
    assert explained.availability.reserved == other_held, explained
    assert [h.reservation_id for h in explained.holds] == [], "a hold read from a group not answered for"
    assert explained.holds_elsewhere
