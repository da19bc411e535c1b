"""A SHIPMENT fact naming an order over groups of different service processes (``ownership = leases``, real services
on a real redis-server), taken by the process of the part's group, where the part holding the id there is another
order's of that id: a stale CONFIRMED copy (``_order_losses.stale``) of a part whose order was resolved and forgotten
before this one opened, its group back from older data (R7). The order's home, at the other process, answers its
``settle`` step with the order as its callers see it; whose the part is, and so whether the fact fulfils it, is told
as where the order is homed at the fact's own process (``_order_shipments``): the answer does not depend on how the
groups are spread over processes (E8)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from reservation import Reservation
from reservation import _orders as orders
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.app.test_order_id_reuse_shipment import copy_in_place, stale_part_in_place
from tests.atp_service.app.test_processes import SHARDS, Process, group_of, processes
from tests.atp_service.app.test_processes_order_steps import stocked
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.fact_helpers import unfulfilled_told
from tests.conftest import ServiceFactory, services_on


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``: leases of 5 s (none lapses here), balancing every 200 ms."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


async def order_o(start: ServiceFactory, confirmed: bool) -> tuple[Process, Process, str, str, int, Reservation]:
    """Two processes; order o of 2 ``a`` (its home's group) and 3 ``b`` (a group of the other process), HELD (or
    ``confirmed``): the home and the other process (each with its client), ``a``, ``b``, ``b``'s group, o's record
    at its home."""
    running = await processes(start, 2)
    (home, home_client), (other, other_client), a, b = await stocked(running)
    assert (await home_client.reserve("o", [(a, "DC", 2), (b, "DC", 3)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    if confirmed:
        await home_client.confirm("o")
    assert home.engine is not None and other.engine is not None
    home_group, part_group = home.engine.home_of("o"), group_of(b)
    assert home_group is not None and not other.engine.actors[part_group].vacant
    opened = home.engine.actors[home_group].ledger.reservation("o")
    assert opened is not None
    return (home, home_client), (other, other_client), a, b, part_group, opened


@pytest.mark.parametrize("stamped", ["after", "before"])
async def test_a_shipment_at_the_part_s_process_tells_another_order_s_part_by_its_event_time_Q3_R4_E8(
        start_process: ServiceFactory, stamped: str) -> None:
    """Order o of 2 ``a`` (its home's group) and 3 ``b`` (a group of the other process), HELD; the part at ``b``'s
    group replaced by an earlier order's stale CONFIRMED copy (3 committed). A SHIPMENT of 1 ``b`` naming o, taken
    by ``b``'s process. Defect (found by review): an order homed at another process had its part fulfilled as
    found, whatever the fact's time, and stamped changed now: no longer stale, the order's Release left the copy's
    other units committed for good, no order's — where with both groups at one process the same fact left them to
    be released. Now, as there: stamped since the order opened, the stock moves alone (not fulfilled), the copy as
    it was; stamped before, the copy's unit is fulfilled, its last change kept. Either way the Release leaves
    nothing committed (Q3)."""
    (_home, home_client), (other, other_client), a, b, part_group, opened = await order_o(start_process, False)
    copy = await stale_part_in_place(other, part_group)

    at = opened.created_at + 1 if stamped == "after" else opened.created_at - 1
    fact = receipt("ship-b", b, "DC", 1, at, kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = "o"
    (shipped,) = await other_client.record_events([fact])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED, shipped
    found = other.engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group))
    assert found is not None
    if stamped == "after":
        assert shipped.detail.startswith(UNFULFILLED) and unfulfilled_told(other, "earlier_order") == 1, shipped
        assert found == copy, "the earlier order's part fulfilled by this order's shipment"
    else:
        assert shipped.detail == "", shipped
        assert _committed(found) == [2] and found.updated_at == copy.updated_at, found
    (again,) = await other_client.record_events([fact])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE, again  # applied once (E8)

    await home_client.release("o")
    assert [(q.on_hand, q.reserved, q.committed) for q in await home_client.availability([(a, "DC"), (b, "DC")])] \
        == [(5, 0, 0), (4, 0, 0)], "the earlier order's units committed for good"


async def test_a_confirmed_order_s_shipment_at_the_part_s_process_fulfils_its_own_part_made_again_R4_Q3(
        start_process: ServiceFactory) -> None:
    """Pins what stays: o CONFIRMED, then its part at ``b``'s group replaced by the earlier order's stale copy. The
    settle step its home answers first makes o's part again over the copy (the copy released), and the order it
    answers with tells that part o's own: the SHIPMENT fulfils it, stamped since o opened (R4, Q3)."""
    (_home, home_client), (other, other_client), a, b, part_group, opened = await order_o(start_process, True)
    await copy_in_place(other, part_group)

    fact = receipt("ship-b", b, "DC", 1, opened.created_at + 1, kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = "o"
    (shipped,) = await other_client.record_events([fact])
    assert (shipped.outcome, shipped.detail) == (pb.FACT_OUTCOME_APPLIED, ""), shipped
    own = other.engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group))
    assert own is not None and own.order_ref != "first" and _committed(own) == [2], own
    assert [(q.on_hand, q.reserved, q.committed) for q in await home_client.availability([(a, "DC"), (b, "DC")])] \
        == [(5, 0, 2), (4, 0, 2)]


def _committed(part: Reservation) -> list[int]:
    return [line.committed for line in part.lines]


@pytest.mark.parametrize("stamped", ["well before", "by a clock behind"])
async def test_a_shipment_at_the_part_s_process_stamped_well_before_the_order_opened_fulfils_nothing_Q3_R4(
        start_process: ServiceFactory, stamped: str) -> None:
    """As ``test_order_id_reuse_shipment``'s test of a fact stamped well before the order opened, with the order's
    home at the other process: the part's process tells it from the order as its home answers the settle step. o
    CONFIRMED, its part at ``b``'s group its own; a SHIPMENT of 1 ``b`` naming o stamped half the retention before o
    opened is an earlier holder's of the id: the stock moves alone, not fulfilled — where o's part took it (Q3). One
    stamped before o opened by more than ``fact_future_skew_ms`` (E7), by a source's clock behind, is o's and
    fulfils it (R4; it fulfilled nothing where the skew was the margin)."""
    (home, home_client), (other, other_client), a, b, part_group, opened = await order_o(start_process, True)

    limits = home.engine.limits
    before = limits.retention_ms // 2 if stamped == "well before" else limits.fact_future_skew_ms + 1
    fact = receipt("ship-b", b, "DC", 1, opened.created_at - before, kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = "o"
    (shipped,) = await other_client.record_events([fact])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED, shipped
    fulfilled = 0 if stamped == "well before" else 1
    assert shipped.detail.startswith(UNFULFILLED) == (not fulfilled), shipped
    assert unfulfilled_told(other, "earlier_holder") == 1 - fulfilled
    part = other.engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group))
    assert part is not None and _committed(part) == [3 - fulfilled], "an earlier holder's shipment fulfilled o"
    (again,) = await other_client.record_events([fact])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE, again  # applied once (E8)
    assert [(q.on_hand, q.committed) for q in await home_client.availability([(a, "DC"), (b, "DC")])] == [
        (5, 2), (4, 3 - fulfilled)]
