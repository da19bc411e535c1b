"""compare.py's `oversold` can only find an oversell where a system was asked for more than the stock:
each row says whether the workload's stock sold out (`sold_out`), so that a 0 that was never tested
(the unary systems in 5 s against the hot workload's 40,000 units) does not read as a result."""

from __future__ import annotations

from benchmarks.compare import Tally, Workload, arguments, violations

HOT = Workload("hot", [("h-00", "dc-1"), ("h-01", "dc-1")], 3)


def test_sold_out_only_when_every_position_granted_its_whole_stock() -> None:
    tally = Tally()
    tally.granted.update({("h-00", "dc-1"): 3, ("h-01", "dc-1"): 2})
    assert not tally.sold_out(HOT)  # one unit left: nothing was refused for want of stock
    tally.granted[("h-01", "dc-1")] += 1
    assert tally.sold_out(HOT) and tally.oversold(HOT.stock) == 0


def test_a_default_run_sells_the_hot_stock_out_at_the_slowest_unary_rate_R2() -> None:
    """The hot workload's 20 SKUs in ``--seconds`` at 1,000 calls/s, below every unary system measured
    (2,000-5,000/s): 40,000 units (2,000 a SKU) outlasted them, so their hot ``oversold`` 0 was never tested."""
    args = arguments([])
    assert 20 * args.hot_stock <= 1_000 * args.seconds, args.hot_stock


def test_any_unit_oversold_fails_the_run() -> None:
    rows = [{"workload": "hot", "system": "lua_grpc", "oversold": 0}, {"workload": "hot", "system": "ceiling",
            "oversold": None}, {"workload": "hot", "system": "service_unary", "oversold": 40}]
    assert violations(rows) == ["service_unary granted 40 units beyond the hot stock (R2)"]
