"""C1/C2: how one channel's feed is paced (``FeedPolicy``) and how a shown number is classed (``StockStatus``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StockStatus(enum.Enum):
    IN_STOCK = "IN_STOCK"
    LOW_STOCK = "LOW_STOCK"
    OUT_OF_STOCK = "OUT_OF_STOCK"


@dataclass(frozen=True, slots=True)
class FeedPolicy:
    """How one channel's feed is paced."""

    throttle_ms: int = 1000
    """At most one publish per key per interval, except a drop to 0 (C2)."""

    rate_per_s: float = 100.0
    """Average updates per second the channel accepts (token bucket refill rate)."""

    burst: int = 0
    """Bucket size: updates that may go out back to back (0: one second's worth)."""

    low_stock_level: int = 5
    """A shown quantity at or below this (and above 0) has status LOW_STOCK."""

    max_wait_ms: int = 30_000
    """A change that has waited this long past its throttle interval goes before the low-stock and
    velocity order (oldest first), still within the rate limit: the bound on how long a slow
    seller's change waits behind fast sellers' while the channel is behind (C2)."""

    def __post_init__(self) -> None:
        if self.throttle_ms < 0:
            raise ValueError("throttle_ms: must not be negative")
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s: must be positive")
        if self.burst < 0 or self.low_stock_level < 0:
            raise ValueError("burst and low_stock_level: must not be negative")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms: must not be negative")

    def status(self, quantity: int) -> StockStatus:
        if quantity <= 0:
            return StockStatus.OUT_OF_STOCK
        return StockStatus.LOW_STOCK if quantity <= self.low_stock_level else StockStatus.IN_STOCK
