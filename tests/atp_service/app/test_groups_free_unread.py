"""``atp_groups_free`` (alert ATPGroupsUnserved: its largest value over the processes) when a process
cannot read the groups' owners: it says it does not know (NaN, which ``max`` passes over), not the
count it read last."""

from __future__ import annotations

import math

import pytest

from atp_service import EmbeddedRedis
from atp_service.storage.durability import STORAGE_ERRORS
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import services_on
from tests.ports import held_port


async def test_a_process_that_cannot_read_the_owners_reports_the_free_groups_unknown(
        redis_server: EmbeddedRedis, redis_url: str) -> None:  # redis_url: a clean keyspace
    """Defect: a process whose balances could no longer read the owners (Redis away from it) kept reporting the
    count of free groups it read last, for as long as it lasted: a 1 read before a group was taken raised
    ATPGroupsUnserved (the max over the processes) though every group was served; a 0 stood for groups it no
    longer saw. Unread, it is NaN — unknown — until a read succeeds again."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    try:
        async with services_on(await proxy.start(), ownership="leases", lease_ms=30_000, balance_ms=10_000,
                               input_streams=()) as start:
            service, _ = await start(port=held_port(), host="127.0.0.1")
            membership, samples = service.membership, service.metrics.registry
            assert membership is not None
            await membership.balance()
            assert samples.get_sample_value("atp_groups_free") == 0
            proxy.hold(b"MGET", reset=True)  # the owners' reads: their connections reset, no answer
            with pytest.raises(STORAGE_ERRORS):
                await membership.balance()
            free = samples.get_sample_value("atp_groups_free")
            assert free is not None and math.isnan(free), free  # was: 0, the count read before
            proxy.hold()
            await membership.balance()
            assert samples.get_sample_value("atp_groups_free") == 0
    finally:
        proxy.hold()
        proxy.drop()
        await proxy.close()
