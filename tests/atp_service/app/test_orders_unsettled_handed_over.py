"""``atp_orders_unsettled`` across a hand-over (``ownership = leases``, real Redis, two service processes): an
order half-way is counted by the process serving its home group, and by that one alone. The alert
(ATPOrdersUnsettled) and the dashboard sum the gauge over the processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_service import AtpService
from tests.atp_service.app.test_lease_lost_mid_renewal import recovery_held_back
from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.app.test_processes_order_steps import confirmed_at_home_only
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


def unsettled(service: AtpService) -> float:
    value = service.metrics.registry.get_sample_value("atp_orders_unsettled")
    assert value is not None
    return value


async def test_an_order_half_way_is_counted_by_the_process_serving_its_home_group_only(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Order o-1 confirmed at its home only (its other part's step refused), housekeeping kept from driving it
    on: counted unsettled at its home's process. Its home group handed over, that process still counted it (its
    set of orders half-way is cleared only as housekeeping drives them on, the next pass at best) while the
    group's next owner counted it too from its recovery: the sum over the processes said 2 orders half-way."""
    (home, _), (other, _), a, _ = await confirmed_at_home_only(start_process, monkeypatch)
    assert home.membership is not None and other.engine is not None and other.engine.orders is not None
    monkeypatch.setattr(other.engine.orders, "drive_unsettled", lambda: None)  # neither carries it through
    assert unsettled(home) == 1 and unsettled(other) == 0

    group = group_of(a)
    _, go_on = recovery_held_back(monkeypatch, group)  # whoever takes it next: not served yet
    await home.membership._hand_over(group)  # as balancing does
    assert group not in owned(home)
    assert unsettled(home) == 0, "its home group is no longer served here"

    go_on.set()
    await until(lambda: any(group in owned(service) for service in (home, other)), "the home group taken", 60)
    assert unsettled(home) + unsettled(other) == 1, "counted once, by the process serving its home"
