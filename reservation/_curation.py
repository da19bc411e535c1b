"""C1: the curated quantity a channel is offered, vectorised over locations with numpy.

Pure arithmetic, no I/O: the channel work (publishers, throttling, C2/C3) builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """How one channel turns `available` into the number it is offered (C1)."""

    buffer_units: int = 0
    """Units held back from the channel."""

    buffer_percent: float = 0.0
    """Share of the (clamped) available held back, rounded up to whole units."""

    allocation: int | None = None
    """Most units the channel may be offered at all (None: no cap)."""

    low_stock_threshold: int = 0
    """At or below this the channel is shown 0: it stops selling before the last unit is gone."""

    max_shown: int | None = None
    """Largest number ever shown (None: no cap)."""

    def __post_init__(self) -> None:
        if self.buffer_units < 0:
            raise ValueError("buffer_units: must not be negative")
        if not 0 <= self.buffer_percent <= 100:
            raise ValueError("buffer_percent: must be within [0, 100]")
        if self.allocation is not None and self.allocation < 0:
            raise ValueError("allocation: must not be negative")
        if self.low_stock_threshold < 0:
            raise ValueError("low_stock_threshold: must not be negative")
        if self.max_shown is not None and self.max_shown < 0:
            raise ValueError("max_shown: must not be negative")


def curate(available: Int64Array, rules: ChannelRules) -> Int64Array:
    """C1 applied elementwise: each element is one offer (a SKU's network total or one position)."""
    x = np.maximum(available, 0)  # Q5: a channel is never offered a negative number
    if rules.buffer_percent:
        x = x - percent_of(x, rules.buffer_percent)
    x = x - rules.buffer_units
    if rules.allocation is not None:
        x = np.minimum(x, rules.allocation)
    x = np.maximum(x, 0)
    x = np.where(x <= rules.low_stock_threshold, 0, x)
    if rules.max_shown is not None:
        x = np.minimum(x, rules.max_shown)
    return x.astype(np.int64)


EXACT_PERCENT_DENOMINATOR = 10**8
"""Largest denominator of ``percent / 100`` computed exactly in int64 (a percent with up to six
decimals); beyond it, floating point (a share no operator writes by hand)."""


def percent_of(units: Int64Array, percent: float) -> Int64Array:
    """``ceil(units * percent / 100)`` exactly (C1's buffer, rounded up to whole units). Floating
    point is not: 100 * 0.07 is 7.000000000000001, so 7 % of 100 held back 8 units. The percent is
    taken as the decimal it is written as, and ``units = q * den + r`` keeps every product in 64
    bits: ``q * num <= units`` since num <= den, and ``r * num < den ** 2 <= 10 ** 16``."""
    ratio = Fraction(str(percent)) / 100
    num, den = ratio.numerator, ratio.denominator
    if den > EXACT_PERCENT_DENOMINATOR:
        rounded_up: Int64Array = np.ceil(units * (percent / 100.0)).astype(np.int64)
        return rounded_up
    whole, rest = np.divmod(units, den)
    share: Int64Array = whole * num - (-rest * num // den)
    return share


_BEYOND_ANY_STOCK = 1 << 40  # far above Limits.max_quantity


def zero_through(rules: ChannelRules) -> int | None:
    """The largest ``available`` that C1 shows as 0. ``curate`` never decreases as available grows,
    so a position at or below it shows 0 on the channel and one above it does not: a change that
    leaves a position there is a stock-out if the channel showed more (C2: published at once).
    None when the channel shows 0 whatever the stock (allocation or max_shown 0)."""
    def shown(units: int) -> int:
        return int(curate(np.array([units], dtype=np.int64), rules)[0])

    if shown(_BEYOND_ANY_STOCK) == 0:
        return None
    low, high = -1, _BEYOND_ANY_STOCK  # invariant: shown(low) == 0 < shown(high)
    while high - low > 1:
        mid = (low + high) // 2
        if shown(mid) == 0:
            low = mid
        else:
            high = mid
    return low


def network_available(available_by_location: Int64Array, sells_from: npt.NDArray[np.bool_]) -> Int64Array:
    """Per SKU (rows), the sum over the locations (columns) a channel may sell from, each clamped at 0
    first: an oversold store does not eat into what a DC can promise."""
    clamped: Int64Array = np.where(sells_from, np.maximum(available_by_location, 0), 0)
    totals: Int64Array = clamped.sum(axis=-1, dtype=np.int64)
    return totals
