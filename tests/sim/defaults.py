"""``--groups``' reference check of the estate's safety-stock defaults (Q4) in what the log holds."""

from __future__ import annotations

import numpy as np

from reservation import decode_entry
from reservation._events import CountsLoaded, FactApplied, HoldMoved, SafetyStockSet, Shipped
from tests.sim.checks import Violation
from tests.sim.simchannels import ESTATE
from tests.sim.world import World


def defaults_applied(world: World) -> None:
    """Q4 in what the log holds (the reference: its history, event by event, per group): a fact that makes a
    position at a location with a safety-stock default comes after that default set there (``SafetyStockSet``,
    logged so that replay equals live, E10), and a LoadCounts row that makes one carries its location's
    default. A position made otherwise first (a safety stock set, a hold, a shipment) is known from then on."""
    defaults = ESTATE.safety_defaults
    for shard, entries in world.log.history.items():
        known: set[tuple[str, str]] = set()
        for seq, data in entries:
            for event in decode_entry(data).events:
                if isinstance(event, SafetyStockSet | HoldMoved | Shipped):
                    known.add((event.sku, event.location))
                elif isinstance(event, FactApplied):
                    fact = event.fact
                    if (fact.sku, fact.location) not in known and defaults.get(fact.location, 0):
                        raise Violation(f"Q4: entry {seq} of group {shard} makes {fact.sku}@{fact.location} by fact "
                                        f"{fact.source}/{fact.event_id} without its default safety stock "
                                        f"{defaults[fact.location]}")
                    known.add((fact.sku, fact.location))
                elif isinstance(event, CountsLoaded):
                    safety = np.frombuffer(event.safety, dtype="<i8").tolist()
                    rows = zip(np.frombuffer(event.sku_index, dtype="<u4").tolist(),
                               np.frombuffer(event.location_index, dtype="<u4").tolist(), strict=True)
                    for sku, loc in ((event.skus[s], event.locations[j]) for s, j in rows):
                        if (sku, loc) not in known and safety[event.locations.index(loc)] != defaults.get(loc, 0):
                            raise Violation(f"Q4: entry {seq} of group {shard} makes {sku}@{loc} by a LoadCounts "
                                            f"row with safety stock {safety[event.locations.index(loc)]}, its "
                                            f"location's default is {defaults.get(loc, 0)}")
                        known.add((sku, loc))
