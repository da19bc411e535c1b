"""C1 arithmetic for every knob, and a network channel over many stores."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reservation import ChannelRules, curate, network_available, zero_through


def c(values: list[int], **rules: float | int | None) -> list[int]:
    return curate(np.array(values, dtype=np.int64), ChannelRules(**rules)).tolist()  # type: ignore[arg-type]


def test_negative_available_is_offered_as_zero_Q5() -> None:
    assert c([-3, 0, 4]) == [0, 0, 4]


def test_buffer_units_and_percent() -> None:
    assert c([10, 3, 2], buffer_units=2) == [8, 1, 0]
    assert c([10, 1], buffer_percent=10) == [9, 0]  # 10 % of 1 rounds up to a whole unit
    assert c([100], buffer_units=5, buffer_percent=10) == [85]


@pytest.mark.parametrize("percent", [7.0, 14.0, 28.0, 56.0, 12.5, 0.1, 33.3, 2.25])
def test_buffer_percent_holds_back_exactly_its_share_rounded_up_C1(percent: float) -> None:
    # 7 % of 100 is 7 units, not 8: 100 * 0.07 is 7.000000000000001 in binary floating point,
    # and rounding that up held back a unit the channel should have been offered.
    ratio = Fraction(str(percent)) / 100
    available = [*range(5_001), 10**12, 2**62]
    exact = [a - math.ceil(a * ratio) for a in available]
    assert c(available, buffer_percent=percent) == exact


def test_allocation_cap_and_max_shown() -> None:
    assert c([50, 5], allocation=20) == [20, 5]
    assert c([50, 5], max_shown=10) == [10, 5]


def test_low_stock_threshold_shows_zero_at_or_below_it() -> None:
    assert c([3, 4, 5], low_stock_threshold=4) == [0, 0, 5]
    # The threshold is applied after the buffer: a channel stops selling before the last unit is gone.
    assert c([6], buffer_units=2, low_stock_threshold=4) == [0]


def test_network_total_over_three_hundred_stores_is_one_array_operation() -> None:
    rng = np.random.default_rng(7)
    available = rng.integers(-2, 10, size=(1000, 302)).astype(np.int64)  # 1,000 SKUs x (300 stores + 2 DCs)
    sells_from = np.zeros(302, dtype=bool)
    sells_from[:2] = True  # the DCs
    sells_from[2:52] = True  # and the first 50 ship-from-store stores
    totals = network_available(available, sells_from)
    expected = [sum(max(v, 0) for v, ok in zip(row, sells_from, strict=True) if ok) for row in available.tolist()]
    assert totals.tolist() == expected
    offered = curate(totals, ChannelRules(buffer_units=3, low_stock_threshold=2, allocation=400))
    assert offered.min() >= 0 and offered.max() <= 400


@pytest.mark.parametrize("bad", [{"buffer_units": -1}, {"buffer_percent": 101}, {"allocation": -1},
                                 {"low_stock_threshold": -1}, {"max_shown": -5}])
def test_bad_rules_name_the_field(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ChannelRules(**bad)  # type: ignore[arg-type]


@given(units=st.integers(0, 20), percent=st.sampled_from([0.0, 5.0, 12.5, 50.0, 99.0]),
       threshold=st.integers(0, 20), allocation=st.one_of(st.none(), st.integers(0, 40)),
       max_shown=st.one_of(st.none(), st.integers(0, 40)))
def test_zero_through_is_exactly_where_a_position_shows_zero_C2(
        units: int, percent: float, threshold: int, allocation: int | None, max_shown: int | None) -> None:
    rules = ChannelRules(buffer_units=units, buffer_percent=percent, low_stock_threshold=threshold,
                         allocation=allocation, max_shown=max_shown)
    available = np.arange(-5, 400, dtype=np.int64)
    shows_zero = curate(available, rules) == 0
    line = zero_through(rules)
    if line is None:  # a channel capped at 0 never shows stock, so it never goes out of stock
        assert shows_zero.all()
    else:
        assert (shows_zero == (available <= line)).all()


def test_zero_through_examples() -> None:
    assert zero_through(ChannelRules()) == 0
    assert zero_through(ChannelRules(buffer_units=2, low_stock_threshold=1)) == 3
    assert zero_through(ChannelRules(buffer_units=1, buffer_percent=50, low_stock_threshold=3)) == 9
    assert zero_through(ChannelRules(allocation=0)) is None
