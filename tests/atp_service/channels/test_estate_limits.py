"""Q4 from the estate file is bounded as SetSafetyStock's: past max_quantity, Q5 could leave int64."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.channels.estate import EstateError, load_estate, parse_estate
from reservation import Limits


@pytest.mark.parametrize(("data", "message"), [
    ({"locations": [{"id": "x", "type": "dc", "safety_stock": 2**63 - 1}]},
     "locations[0].safety_stock: must be at most 1000000 (limit max_quantity)"),
    ({"locations": [{"id": "x", "type": "dc", "safety_stock": 2**63}]},
     "locations[0].safety_stock: must be at most 1000000 (limit max_quantity)"),
    ({"safety_stock": {"store": 1_000_001}}, "safety_stock.store: must be at most 1000000 (limit max_quantity)"),
    ({"safety_stock": {"dc": True}}, "safety_stock.dc: must be a non-negative integer"),
])
def test_safety_stock_past_the_limit_names_the_key_and_the_limit_Q4(data: dict[str, object], message: str) -> None:
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value) == message


def test_the_bound_is_the_configured_max_quantity_Q4(tmp_path: Path) -> None:
    data = {"safety_stock": {"store": 5}, "locations": [{"id": "s", "type": "store"}]}
    assert parse_estate(data).safety_defaults == {"s": 5}
    with pytest.raises(EstateError, match=r"safety_stock.store: must be at most 4 \(limit max_quantity\)"):
        parse_estate(data, Limits(max_quantity=4))
    path = tmp_path / "estate.toml"
    path.write_text('[[locations]]\nid = "s"\ntype = "store"\nsafety_stock = 9223372036854775807\n')
    with pytest.raises(EstateError, match=r"locations\[0\].safety_stock: must be at most 1000000"):
        load_estate(path)
    with pytest.raises(EstateError, match="must be at most 2147483647"):
        load_estate(path, Limits(max_quantity=2**31 - 1, max_on_hand=2**53))
