"""The estate and channel configuration: one TOML file of locations, groups and channels.

Parsing only (no I/O beyond reading the file): every problem is reported with the path of the
offending key, e.g. ``channels[2].buffer_percent: must be within [0, 100]``.

    [[locations]]
    id = "dc-east"
    type = "dc"            # "store" or "dc"
    region = "east"

    [groups]
    ship-from-store = ["store-001", "store-002"]

    [[channels]]
    name = "marketplace"
    sells_from = ["dc-east", "ship-from-store"]   # locations and/or groups
    per_location = false   # true: one offer per (SKU, location), like store pickup
    buffer_units = 2
    buffer_percent = 5.0
    allocation = 500       # omit: no cap
    low_stock_threshold = 3
    max_shown = 999        # omit: no cap
    throttle_ms = 60000    # at most one publish per SKU per interval (C2)
    rate_limit_per_s = 10.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reservation import ChannelRules

LOCATION_TYPES = ("store", "dc")


class EstateError(ValueError):
    """The configuration is wrong; the message starts with the path of the offending key."""


@dataclass(frozen=True, slots=True)
class Location:
    id: str
    type: str
    region: str = ""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    sells_from: tuple[str, ...]
    """Location ids, groups already expanded, in configuration order."""
    per_location: bool
    rules: ChannelRules
    throttle_ms: int
    rate_limit_per_s: float


@dataclass(frozen=True, slots=True)
class Estate:
    locations: dict[str, Location]
    groups: dict[str, tuple[str, ...]]
    channels: dict[str, Channel] = field(default_factory=dict)


def load_estate(path: Path) -> Estate:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise EstateError(f"{path}: not valid TOML: {exc}") from None
    return parse_estate(data)


def parse_estate(data: dict[str, Any]) -> Estate:
    locations: dict[str, Location] = {}
    for n, raw in enumerate(_list(data, "locations")):
        where = f"locations[{n}]"
        loc = Location(_text(raw, "id", where), _text(raw, "type", where), _text(raw, "region", where, ""))
        if loc.type not in LOCATION_TYPES:
            raise EstateError(f"{where}.type: must be one of {', '.join(LOCATION_TYPES)}, got {loc.type!r}")
        if loc.id in locations:
            raise EstateError(f"{where}.id: {loc.id!r} is defined twice")
        locations[loc.id] = loc
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in dict(data.get("groups", {})).items():
        if name in locations:
            raise EstateError(f"groups.{name}: a location has the same id")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise EstateError(f"groups.{name}: must be a list of location ids")
        for m in members:
            if m not in locations:
                raise EstateError(f"groups.{name}: unknown location {m!r}")
        groups[name] = tuple(members)
    channels: dict[str, Channel] = {}
    for n, raw in enumerate(_list(data, "channels")):
        channel = _channel(raw, f"channels[{n}]", locations, groups)
        if channel.name in channels:
            raise EstateError(f"channels[{n}].name: {channel.name!r} is defined twice")
        channels[channel.name] = channel
    return Estate(locations, groups, channels)


def _channel(raw: dict[str, Any], where: str, locations: dict[str, Location],
             groups: dict[str, tuple[str, ...]]) -> Channel:
    name = _text(raw, "name", where)
    sells_from: list[str] = []
    targets = raw.get("sells_from")
    if not isinstance(targets, list) or not targets:
        raise EstateError(f"{where}.sells_from: must be a non-empty list of locations or groups")
    for target in targets:
        members = groups.get(target) or ((target,) if target in locations else None)
        if members is None:
            raise EstateError(f"{where}.sells_from: unknown location or group {target!r}")
        sells_from += [m for m in members if m not in sells_from]
    try:
        rules = ChannelRules(
            buffer_units=int(raw.get("buffer_units", 0)),
            buffer_percent=float(raw.get("buffer_percent", 0.0)),
            allocation=_optional_int(raw, "allocation"),
            low_stock_threshold=int(raw.get("low_stock_threshold", 0)),
            max_shown=_optional_int(raw, "max_shown"),
        )
    except (TypeError, ValueError) as exc:
        raise EstateError(f"{where}.{exc}") from None
    throttle_ms = int(raw.get("throttle_ms", 1000))
    rate = float(raw.get("rate_limit_per_s", 100.0))
    if throttle_ms < 0:
        raise EstateError(f"{where}.throttle_ms: must not be negative")
    if rate <= 0:
        raise EstateError(f"{where}.rate_limit_per_s: must be positive")
    return Channel(name, tuple(sells_from), bool(raw.get("per_location", False)), rules, throttle_ms, rate)


def _list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise EstateError(f"{key}: must be an array of tables ([[{key}]])")
    return value


def _text(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise EstateError(f"{where}.{key}: must be a non-empty string")
    return value


def _optional_int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key}: must be an integer")
    return value
