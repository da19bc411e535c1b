"""The estate/channel TOML: a good file parses, every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.channels.estate import EstateError, load_estate, parse_estate

GOOD = """
[[locations]]
id = "dc-east"
type = "dc"
region = "east"

[[locations]]
id = "store-001"
type = "store"

[[locations]]
id = "store-002"
type = "store"

[groups]
ship-from-store = ["store-001", "store-002"]

[[channels]]
name = "marketplace"
sells_from = ["dc-east", "ship-from-store", "store-001"]
buffer_units = 2
buffer_percent = 5.0
allocation = 500
low_stock_threshold = 3
throttle_ms = 60000
rate_limit_per_s = 10.0

[[channels]]
name = "pickup"
sells_from = ["ship-from-store"]
per_location = true
"""


def test_a_good_estate_parses(tmp_path: Path) -> None:
    path = tmp_path / "estate.toml"
    path.write_text(GOOD)
    estate = load_estate(path)
    assert estate.locations["dc-east"].region == "east"
    market = estate.channels["marketplace"]
    assert market.sells_from == ("dc-east", "store-001", "store-002")  # groups expanded, no repeats
    assert market.rules.allocation == 500 and market.rules.max_shown is None
    assert estate.channels["pickup"].per_location


@pytest.mark.parametrize(("data", "message"), [
    ({"locations": [{"id": "x", "type": "warehouse"}]}, "locations[0].type: must be one of store, dc"),
    ({"locations": [{"id": "x", "type": "dc"}, {"id": "x", "type": "dc"}]}, "locations[1].id: 'x' is defined twice"),
    ({"locations": [{"type": "dc"}]}, "locations[0].id: must be a non-empty string"),
    ({"groups": {"g": ["nowhere"]}}, "groups.g: unknown location 'nowhere'"),
    ({"channels": [{"name": "c", "sells_from": ["nowhere"]}]}, "channels[0].sells_from: unknown location"),
    ({"channels": [{"name": "c", "sells_from": []}]}, "channels[0].sells_from: must be a non-empty list"),
    ({"locations": [{"id": "x", "type": "dc"}], "channels": [{"name": "c", "sells_from": ["x"],
                                                               "buffer_percent": 150}]},
     "channels[0].buffer_percent: must be within [0, 100]"),
    ({"locations": [{"id": "x", "type": "dc"}], "channels": [{"name": "c", "sells_from": ["x"],
                                                               "rate_limit_per_s": 0}]},
     "channels[0].rate_limit_per_s: must be positive"),
    *((({"locations": [{"id": "x", "type": "dc"}], "channels": [{"name": "c", "sells_from": ["x"], key: value}]},
        f"channels[0].{key}: {message}")
       for key, value, message in [
           ("burst", -1, "must not be negative"),
           ("low_stock_level", -5, "must not be negative"),
           ("throttle_ms", -1, "must not be negative"),
           ("max_wait_ms", -1, "must not be negative"),
           ("max_wait_ms", 1.5, "must be an integer"),
           ("buffer_units", "2", "must be an integer"),
           ("buffer_units", 2.5, "must be an integer"),
           ("low_stock_threshold", True, "must be an integer"),
           ("buffer_percent", "5%", "must be a number"),
           ("rate_limit_per_s", float("nan"), "must be a number"),
       ])),
])
def test_mistakes_name_their_key(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value).startswith(message)


def test_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "estate.toml"
    path.write_text("[[locations]\nid=")
    with pytest.raises(EstateError, match="not valid TOML"):
        load_estate(path)


def test_safety_stock_defaults_by_type_and_by_location() -> None:
    estate = parse_estate({
        "safety_stock": {"store": 1},
        "locations": [{"ids": ["s1", "s2"], "type": "store"}, {"id": "s3", "type": "store", "safety_stock": 4},
                      {"id": "d1", "type": "dc"}, {"id": "s4", "type": "store", "safety_stock": 0}],
    })
    assert estate.safety_defaults == {"s1": 1, "s2": 1, "s3": 4}


@pytest.mark.parametrize(("data", "message"), [
    ({"safety_stock": {"warehouse": 1}}, "safety_stock.warehouse: not a location type"),
    ({"safety_stock": {"store": -1}}, "safety_stock.store: must be a non-negative integer"),
    ({"locations": [{"id": "x", "type": "dc", "safety_stock": "2"}]}, "locations[0].safety_stock: must be"),
])
def test_bad_safety_stock_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value).startswith(message)
