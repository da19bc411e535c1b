"""One leased process serving both shard groups of a two-shard keyspace, 5 of S1 received at a SKU of each
(``stocked_pair``): the rig of the tests of orders spanning groups whose parts Redis loses or replaces."""

from __future__ import annotations

from typing import Any

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from atp_service.engine.router import Engine
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.engine.test_expiry_races import _two_shards
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

MAX_TTL_S = 120
"""The longest TTL: a part older than it (and the margin) is looked at by housekeeping. Well below
``retention_ms`` (24 h): the order's record is not forgotten meanwhile (its part would be an orphan)."""
LEASED: dict[str, Any] = {"ownership": "leases", "lease_ms": 9000, "balance_ms": 200, "shards": 2,
                          "input_streams": (), "owner_check_s": 0.05, "maintenance_interval_ms": 3_600_000,
                          "limits": Limits(max_ttl_seconds=MAX_TTL_S, default_ttl_seconds=60)}
"""One leased process serving both groups: its owner check finds a group's log short; housekeeping runs
when the test says. A balance every 200 ms, not a third of the lease (3 s): the group its owner check gave up
is taken again at the next balance, which each test waited for (3 s of its 4)."""


async def stocked_pair(start_service: ServiceFactory, clock: ManualClock | None = None,
                       **settings: Any) -> tuple[AtpService, AtpClient, Engine, str, str]:
    """A leased service (``LEASED``, ``settings`` over it) on ``clock`` (a new one at ``T0`` by default), both its
    groups taken, 5 of S1 received at SKU ``a`` and at SKU ``b``, each in a group of its own: (service, client,
    engine, a, b)."""
    service, client = await start_service(clock=clock or ManualClock(T0), port=held_port(), **{**LEASED, **settings})
    engine = service.engine
    assert engine is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "both groups taken")
    a, b = _two_shards(service)
    await client.record_events([receipt("s-a", a, "S1", 5, T0), receipt("s-b", b, "S1", 5, T0)])
    return service, client, engine, a, b
