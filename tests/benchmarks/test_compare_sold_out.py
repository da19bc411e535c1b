"""compare.py's `oversold` can only find an oversell where a system was asked for more than the stock:
each row says whether the workload's stock sold out (`sold_out`), so that a 0 that was never tested
(the unary systems in 5 s against the hot workload's 40,000 units) does not read as a result."""

from __future__ import annotations

from benchmarks.compare import Tally, Workload

HOT = Workload("hot", [("h-00", "dc-1"), ("h-01", "dc-1")], 3)


def test_sold_out_only_when_every_position_granted_its_whole_stock() -> None:
    tally = Tally()
    tally.granted.update({("h-00", "dc-1"): 3, ("h-01", "dc-1"): 2})
    assert not tally.sold_out(HOT)  # one unit left: nothing was refused for want of stock
    tally.granted[("h-01", "dc-1")] += 1
    assert tally.sold_out(HOT) and tally.oversold(HOT.stock) == 0
