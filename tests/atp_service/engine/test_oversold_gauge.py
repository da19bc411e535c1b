"""``atp_oversold_units`` (Q5) on a real service and Redis: kept current a bounded slice at a time."""

from __future__ import annotations

from typing import Any

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import gauges
from atp_service.engine.gauges import OversoldSweep
from reservation import PositionStore
from reservation._columns import ON_HAND, RESERVED
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

SLICE = 40


async def test_the_oversold_gauge_sums_a_bounded_slice_of_the_arrays_per_pass_and_all_of_them_in_the_end_Q5(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gauge was one pass over every position of every shard in one turn of the event loop: at
    30 M positions ~80 ms each second, every shard and call held behind it. A housekeeping pass now
    sums at most ``OVERSOLD_SLOTS_PER_PASS`` slots; over passes the gauge says every oversold unit."""
    monkeypatch.setattr(gauges, "OVERSOLD_SLOTS_PER_PASS", SLICE, raising=False)
    monkeypatch.setattr(gauges, "OVERSOLD_SWEEP_EVERY_S", 0.0, raising=False)  # passes back to back here
    swept: list[int] = []
    real = PositionStore.oversold_units

    def counted(store: PositionStore, start: int = 0, stop: int | None = None) -> int:
        swept.append(min(store.slots if stop is None else stop, store.slots) - start)
        return real(store, start, stop)

    monkeypatch.setattr(PositionStore, "oversold_units", counted)
    service, client = await start_service(clock=ManualClock(T0), maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    locations = [f"S{n}" for n in range(100)]  # 100 positions a SKU: a shard's arrays past SLICE slots
    await client.record_events([receipt(f"in-{sku}-{loc}", sku, loc, 2) for sku in "ABCD" for loc in locations])
    assert max(actor.positions().slots for actor in engine.actors) > SLICE
    for sku in "ABCD":  # promised 2, then a sale stamped before: 1 unit oversold at each (Q5)
        assert (await client.reserve(f"r-{sku}", [(sku, "S7", 2)])).reservation_id == f"r-{sku}"
        await client.record_events([receipt(f"sale-{sku}", sku, "S7", 1, t=T0 - 500, kind=pb.FACT_KIND_SALE)])
    swept.clear()
    passes = 0
    while gauge(service) != 4:
        passes += 1
        assert passes <= 100, f"the gauge said {gauge(service)} after 100 passes, not the 4 units oversold"
        await engine.run_maintenance()
    assert swept and max(swept) <= SLICE, f"one pass summed {max(swept)} slots of a shard at once"


def test_an_empty_estate_or_a_bad_slice_is_said() -> None:
    assert OversoldSweep([]).step(0.0) == 0
    with pytest.raises(ValueError, match="slots_per_pass"):
        OversoldSweep([], slots_per_pass=0)
    with pytest.raises(ValueError, match="every_s"):
        OversoldSweep([], every_s=-1.0)


class _Shard:
    """A shard as the sweep sees it: its positions, one per SKU, each oversold by ``oversold``."""

    asked: list[int] = []  # the positions' slots, at each look

    def __init__(self, skus: int, oversold: int) -> None:
        self.store = PositionStore()
        for n in range(skus):
            self.store.add(f"s{n}", "L", ON_HAND, 1)
            self.store.add(f"s{n}", "L", RESERVED, 1 + oversold)

    def positions(self) -> PositionStore:
        _Shard.asked.append(self.store.slots)
        return self.store


def test_a_sweep_over_every_shard_begins_at_most_once_a_second_and_a_large_one_goes_on_a_slice_a_pass() -> None:
    """Passes come every 100 ms: a small estate was summed whole at each, ten times a second, for a gauge
    scraped every 15 s. A sweep begins ``every_s`` after the last began; one larger than a pass's
    slots goes on a slice each pass whatever the time, and what it says changes when a shard's ends."""
    shards = [_Shard(3, 1), _Shard(3, 2)]
    sweep = OversoldSweep(shards, slots_per_pass=100, every_s=1.0)
    swept = _Shard.asked  # shards' positions looked at, by every sweep
    swept.clear()
    assert sweep.step(10.0) == 9 and len(swept) == 2  # both shards in one pass
    shards[0].store.add("s0", "L", RESERVED, 5)
    assert [sweep.step(10.0 + 0.1 * n) for n in range(1, 10)] == [9] * 9 and len(swept) == 2  # none begun
    assert sweep.step(11.0) == 14 and len(swept) == 4  # a second after the last began: swept anew
    assert {shard.store.slots for shard in shards} == {12}  # room for 4 positions a SKU
    sliced = OversoldSweep(shards, slots_per_pass=6, every_s=1.0)  # a shard in two passes, the sweep in four
    assert [sliced.step(20.0 + 0.01 * n) for n in range(5)] == [0, 8, 8, 14, 14]  # a shard's part once it ends
    swept.clear()
    assert sliced.step(20.99) == 14 and not swept  # the last sweep began 0.99 s ago
    assert sliced.step(21.0) == 14 and swept == [12]  # the next began: its first slice, nothing ended yet


def gauge(service: Any) -> float:
    value = service.metrics.registry.get_sample_value("atp_oversold_units")
    assert value is not None
    return float(value)
