"""The channel desk's marks: which SKUs (and positions) the next round curates, and the newest
source time of a durable change behind each (C3). ``dirty``: sku -> location -> that time, where
location "" stands for the whole row (a baseline block, a start or reload, which mark every SKU
rather than every position); ``dirty_at``: sku -> when it was first marked (the publish delay)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

from reservation._events import CountsLoaded

Dirty = dict[str, dict[str, int]]


def mark_skus(dirty: Dirty, dirty_at: dict[str, int], skus: Iterable[str], t: int | Sequence[int], now: int) -> None:
    """Every SKU of ``skus`` curated whole in the next round, one step per SKU, not per position; ``t``: the source
    time of all, or of each SKU."""
    for sku, at in zip(skus, repeat(t) if isinstance(t, int) else t, strict=False):  # repeat: no end
        locs = dirty.get(sku)
        if locs is None:
            locs = dirty[sku] = {}
            dirty_at[sku] = now
        if locs.get("", -1) < at:  # "": no one location, the row's source time (``curate_shard``);
            locs[""] = at  # set even at 0 (an undone entry): the curator takes a time from every mark


def loaded_times(event: CountsLoaded) -> list[int]:
    """Per SKU of a block of counts, the time of its newest count (C3). The block's newest time over every SKU
    stamped a SKU counted earlier with another SKU's count, a fact not behind its value at all."""
    times = np.zeros(len(event.skus), dtype=np.int64)
    np.maximum.at(times, np.frombuffer(event.sku_index, dtype="<u4"), np.frombuffer(event.at, dtype="<i8"))
    return times.tolist()


def remark(dirty: Dirty, dirty_at: dict[str, int], left: Dirty, left_at: dict[str, int]) -> None:
    """SKUs a round took but did not curate (``left``) are marked again, each with its times."""
    for sku, times in left.items():
        locs = dirty.setdefault(sku, {})
        for loc, t in times.items():
            if locs.get(loc, -1) < t:
                locs[loc] = t
        dirty_at[sku] = min(dirty_at.get(sku, left_at[sku]), left_at[sku])


def velocity_at(velocity: dict[str, tuple[float, int]], half_life_ms: float, sku: str, now: int) -> float:
    """A SKU's demand (``velocity``: sku -> (decayed units, at)) decayed to ``now``: the busiest
    SKUs' changes go out first when a channel's rate limit holds them back."""
    value, at = velocity.get(sku, (0.0, now))
    return value * math.exp2(-(now - at) / half_life_ms) if now > at else value


def velocity_rank(velocity: dict[str, tuple[float, int]], half_life_ms: float, sku: str) -> float:
    """A number that orders SKUs as their demand decayed to one common time would, whenever each was
    taken: ``log2`` of the demand plus its time in half-lives (decaying subtracts as much from both).
    A change waiting with its demand decayed to when it was offered was overstated against a fresher
    one decayed to later (-inf: no demand)."""
    value, at = velocity.get(sku, (0.0, 0))
    return math.log2(value) + at / half_life_ms if value > 0 else -math.inf
