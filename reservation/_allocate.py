"""Reservation lines against a location group: which locations give the units (pure).

A line may name a group instead of a location; the channel's strategy picks the locations:
``priority`` takes from the group's members in their configured order, ``most_available``
from the member with the most available first. Either may split the line across locations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

STRATEGIES = ("priority", "most_available")


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """The groups a reservation may name, and how its channel picks locations from them."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Group name -> member locations in priority order."""

    strategy: str = "priority"
    """``priority`` (members in order) or ``most_available`` (largest available first)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


def allocate(members: tuple[str, ...], quantity: int, available: Callable[[str], int],
             strategy: str) -> tuple[list[tuple[str, int, int]], int]:
    """Split ``quantity`` over ``members``. Returns ([(location, units, available there)], total
    available); the list is empty when the group cannot give the whole quantity (R2)."""
    # A member named twice counted its stock twice and was held past it (R2): each counts once.
    avail = [(loc, max(0, available(loc))) for loc in dict.fromkeys(members)]  # Q5: an oversold one gives nothing
    total = sum(a for _, a in avail)
    if quantity > total:
        return [], total
    if strategy == "most_available":
        avail.sort(key=lambda item: -item[1])  # stable: equal stock keeps priority order
    picks: list[tuple[str, int, int]] = []
    remaining = quantity
    for loc, a in avail:
        if remaining == 0:
            break
        take = min(a, remaining)
        if take:
            picks.append((loc, take, a))
            remaining -= take
    return picks, total
