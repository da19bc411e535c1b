"""The estate and channel configuration: one TOML file of locations, groups and channels.

Parsing only (no I/O beyond reading the file): every problem is reported with the path of the
offending key, e.g. ``channels[2].buffer_percent: must be within [0, 100]``.

    [[locations]]
    id = "dc-east"
    type = "dc"            # "store" or "dc"
    region = "east"

    [[locations]]          # several locations of one type and region at once
    ids = ["store-001", "store-002"]
    type = "store"
    region = "east"

    [safety_stock]         # units protected at every new position of a location type (Q4)
    store = 1              # a location's own `safety_stock = N` wins

    [groups]
    ship-from-store = ["store-001", "store-002"]     # ids, in priority order
    stores-east = { type = "store", region = "east" }  # or a selector

    [[channels]]
    name = "marketplace"
    sells_from = ["dc-east", "ship-from-store"]   # locations and/or groups
    per_location = false   # true: one offer per (SKU, location), like store pickup
    buffer_units = 2
    buffer_percent = 5.0
    allocation = 500       # omit: no cap
    low_stock_threshold = 3
    max_shown = 999        # omit: no cap
    low_stock_level = 10   # shown 1..10: status LOW_STOCK (default: 2 x low_stock_threshold, at least 5)
    throttle_ms = 60000    # at most one publish per SKU per interval (C2)
    rate_limit_per_s = 10.0
    burst = 10             # updates that may go back to back (default: one second's worth)
    max_wait_ms = 30000    # a change waiting this long past its throttle goes before the velocity order
    strategy = "priority"  # group reservations: "priority" (sells_from order) or "most_available"
    stream_maxlen = 100000 # the channel stream is trimmed to about this many entries
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atp_service.storage.keys import shares_keys
from reservation import ChannelRules, DomainError, FeedPolicy, GroupPolicy, Reason
from reservation._errors import InvalidArgument
from reservation._limits import Limits
from reservation._validate import check_id, check_safety_stock

LOCATION_TYPES = ("store", "dc")
STRATEGIES = ("priority", "most_available")
DEFAULT_LIMITS = Limits()
MAX_COUNT = 2**63 - 1
"""The largest integer a key takes: TOML reads any, but C1's numpy arithmetic (int64) and Redis's
stream MAXLEN take none larger — one past it ended the channel desk's task, and every feed with it."""
MIN_RATE_PER_S = 1e-6
"""The smallest ``rate_limit_per_s`` taken: one update in about 11.6 days. The feed's token bucket
waits ``1000 / rate`` ms for a token; a positive rate near 1e-306 made that infinite and
``int()`` of it raised OverflowError in the channel desk's round, which ended the desk (and every
feed with it, stock-outs included) while health said SERVING."""


class EstateError(ValueError):
    """The configuration is wrong; the message starts with the path of the offending key (the file's
    own path is the caller's to add, once: ``estate: FILE: locations[0].type: ...``)."""


class EstateUnusable(DomainError):
    """A call needs an estate the service cannot use (no channels configured, a file that does not
    load): FAILED_PRECONDITION. Not ``FailedPrecondition``, whose message names a reservation's state
    (R3): the message is given whole and starts with ``estate: ``."""

    reason = Reason.ESTATE_UNUSABLE


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
    policy: FeedPolicy
    """Throttle, rate limit and status bands of the channel's feed (C2)."""
    strategy: str = "priority"
    """How a reservation line naming a group picks locations: sells_from order or most available."""
    stream_maxlen: int = 100_000
    """The channel stream is trimmed to about this many entries."""


@dataclass(frozen=True, slots=True)
class Estate:
    locations: dict[str, Location]
    groups: dict[str, tuple[str, ...]]
    channels: dict[str, Channel] = field(default_factory=dict)
    safety_defaults: dict[str, int] = field(default_factory=dict)
    """Q4 units protected at a location's new positions (per type, or per location), nonzero only."""


def group_policies(estate: Estate) -> tuple[dict[str, GroupPolicy], GroupPolicy | None]:
    """Per channel, the groups a Reserve line may name and the channel's strategy; the default
    (priority order) for reservations of channels not configured. None: no groups at all."""
    if not estate.groups:
        return {}, None
    per_channel = {name: GroupPolicy(estate.groups, c.strategy) for name, c in estate.channels.items()}
    return per_channel, GroupPolicy(estate.groups, "priority")


def load_estate(path: Path, limits: Limits = DEFAULT_LIMITS) -> Estate:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise EstateError(f"not UTF-8 text (TOML is): byte {exc.start} cannot be read") from None
    except tomllib.TOMLDecodeError as exc:
        raise EstateError(f"not valid TOML: {exc}") from None
    return parse_estate(data, limits)


ESTATE_KEYS = ("locations", "safety_stock", "groups", "channels")
LOCATION_KEYS = ("id", "ids", "type", "region", "safety_stock")
CHANNEL_KEYS = ("name", "sells_from", "per_location", "buffer_units", "buffer_percent", "allocation",
                "low_stock_threshold", "max_shown", "low_stock_level", "throttle_ms", "rate_limit_per_s", "burst",
                "max_wait_ms", "strategy", "stream_maxlen")


def _only_known(raw: dict[str, Any], where: str, known: tuple[str, ...]) -> None:
    """A key the service does not read is refused, never skipped: a typo (``bufer_units``, ``[[channel]]``)
    quietly gave the channel no buffer (units offered that were meant to be held back, C1), or a reload
    with no channels at all."""
    for key in raw:
        if key not in known:
            raise EstateError(f"{where}{key}: unknown key (known: {', '.join(known)})")


def parse_estate(data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Estate:
    _only_known(data, "", ESTATE_KEYS)
    locations: dict[str, Location] = {}
    own_safety: dict[str, int] = {}
    for n, raw in enumerate(_list(data, "locations")):
        where = f"locations[{n}]"
        _only_known(raw, f"{where}.", LOCATION_KEYS)
        kind, region = _text(raw, "type", where), _text(raw, "region", where, "")
        if kind not in LOCATION_TYPES:
            raise EstateError(f"{where}.type: must be one of {', '.join(LOCATION_TYPES)}, got {kind!r}")
        if "ids" in raw:
            ids = raw["ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
                raise EstateError(f"{where}.ids: must be a non-empty list of location ids")
        else:
            ids = [_text(raw, "id", where)]
        safety = raw.get("safety_stock")
        if safety is not None:
            safety = _safety_stock(f"{where}.safety_stock", safety, limits)
        for k, loc_id in enumerate(ids):
            _check_name(f"{where}.ids[{k}]" if "ids" in raw else f"{where}.id", loc_id, limits)
            if loc_id in locations:
                raise EstateError(f"{where}.id: {loc_id!r} is defined twice")
            locations[loc_id] = Location(loc_id, kind, region)
            if safety is not None:
                own_safety[loc_id] = safety
    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise EstateError("groups: must be a table of group = [locations] or {type, region}")
    for name, members in raw_groups.items():
        _check_name(f"groups.{name}" if name.isprintable() else f"groups.{name!r}", name, limits)
        if name in locations:
            raise EstateError(f"groups.{name}: a location has the same id")
        groups[name] = _group(name, members, locations)
    channels: dict[str, Channel] = {}
    for n, raw in enumerate(_list(data, "channels")):
        channel = _channel(raw, f"channels[{n}]", locations, groups)
        if channel.name in channels:
            raise EstateError(f"channels[{n}].name: {channel.name!r} is defined twice")
        _check_channel_name(f"channels[{n}].name", channel.name, limits)
        channels[channel.name] = channel
    for name in channels:  # C1: its state or restamp hash, or a publisher's key, would be the other's stream
        for other in channels:
            if shares_keys(name, other):
                raise EstateError(f"channels: {name!r} and {other!r} would share a Redis key")
    return Estate(locations, groups, channels, _safety_defaults(data, locations, own_safety, limits))


RESERVED_CHANNEL_NAMES = frozenset({"owner", "fence"})
"""The channel feeds' own keys sit beside the channels' streams (``<prefix>{avail}:owner``, ``:fence``)."""


def _check_name(where: str, name: str, limits: Limits) -> None:
    """A name callers give the API (a location or a group: a Reserve line's location, a fact's) is an id it
    accepts: one ``check_id`` refuses was taken, and every fact and Reserve naming it refused (C1: never offered)."""
    try:
        check_id(where, name, limits)
    except InvalidArgument as exc:
        raise EstateError(exc.message) from None


def _check_channel_name(where: str, name: str, limits: Limits) -> None:
    """A channel's name is its Redis keys' (``Keyspace.channel_stream``) and what callers name in
    WatchAvailability and Reserve: an id those accept, and never one of the feeds' own keys."""
    _check_name(where, name, limits)
    if name in RESERVED_CHANNEL_NAMES:
        raise EstateError(f"{where}: {name!r} is reserved (a key of the channel feeds has that name)")


def _safety_stock(where: str, units: Any, limits: Limits) -> int:
    """Q4 from the file, bounded as SetSafetyStock's is: past max_quantity, Q5 could leave int64."""
    try:
        return check_safety_stock(where, units, limits)
    except InvalidArgument as exc:
        raise EstateError(exc.message) from None


def _safety_defaults(data: dict[str, Any], locations: dict[str, Location], own: dict[str, int],
                     limits: Limits) -> dict[str, int]:
    """``[safety_stock] store = 1`` protects a unit at every store's new positions; a location's own
    ``safety_stock`` key wins over its type's."""
    by_type = data.get("safety_stock", {})
    if not isinstance(by_type, dict):
        raise EstateError("safety_stock: must be a table of location type = units")
    for kind, units in by_type.items():
        if kind not in LOCATION_TYPES:
            raise EstateError(f"safety_stock.{kind}: not a location type ({', '.join(LOCATION_TYPES)})")
        _safety_stock(f"safety_stock.{kind}", units, limits)
    out = {loc.id: by_type.get(loc.type, 0) for loc in locations.values()}
    out.update(own)
    return {loc: units for loc, units in out.items() if units}


def _channel(raw: dict[str, Any], where: str, locations: dict[str, Location],
             groups: dict[str, tuple[str, ...]]) -> Channel:
    _only_known(raw, f"{where}.", CHANNEL_KEYS)
    name = _text(raw, "name", where)
    sells_from: list[str] = []
    targets = raw.get("sells_from")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise EstateError(f"{where}.sells_from: must be a non-empty list of locations or groups")
    for target in targets:
        members = groups.get(target) or ((target,) if target in locations else None)
        if members is None:
            raise EstateError(f"{where}.sells_from: unknown location or group {target!r}")
        sells_from += [m for m in members if m not in sells_from]
    buffer_units, buffer_percent = _int(raw, "buffer_units", where, 0), _number(raw, "buffer_percent", where, 0.0)
    low_stock_threshold = _int(raw, "low_stock_threshold", where, 0)
    try:  # ChannelRules checks the ranges and names the field; the prefix says which channel
        rules = ChannelRules(buffer_units=buffer_units, buffer_percent=buffer_percent,
                             allocation=_optional_int(raw, "allocation"), low_stock_threshold=low_stock_threshold,
                             max_shown=_optional_int(raw, "max_shown"))
    except (TypeError, ValueError) as exc:
        raise EstateError(f"{where}.{exc}") from None
    throttle_ms = _int(raw, "throttle_ms", where, 1000)
    rate = _number(raw, "rate_limit_per_s", where, 100.0)
    burst = _int(raw, "burst", where, 0)
    low_stock_level = _int(raw, "low_stock_level", where, max(5, 2 * rules.low_stock_threshold))
    max_wait_ms = _int(raw, "max_wait_ms", where, FeedPolicy().max_wait_ms)
    for key, value in (("throttle_ms", throttle_ms), ("burst", burst), ("low_stock_level", low_stock_level),
                       ("max_wait_ms", max_wait_ms)):
        if value < 0:  # refused, not clamped: a typo must not quietly change what the channel sees
            raise EstateError(f"{where}.{key}: must not be negative")
    if rate <= 0:
        raise EstateError(f"{where}.rate_limit_per_s: must be positive")
    if rate < MIN_RATE_PER_S:
        raise EstateError(f"{where}.rate_limit_per_s: must be at least {MIN_RATE_PER_S} (one update in ~11.6 days)")
    policy = FeedPolicy(throttle_ms=throttle_ms, rate_per_s=rate, burst=burst, low_stock_level=low_stock_level,
                        max_wait_ms=max_wait_ms)
    strategy = _text(raw, "strategy", where, "priority")
    if strategy not in STRATEGIES:
        raise EstateError(f"{where}.strategy: must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    maxlen = _int(raw, "stream_maxlen", where, 100_000)
    if maxlen < 1:
        raise EstateError(f"{where}.stream_maxlen: must be positive")
    per_location = raw.get("per_location", False)
    if not isinstance(per_location, bool):
        raise EstateError(f"{where}.per_location: must be true or false")
    return Channel(name, tuple(sells_from), per_location, rules, policy, strategy, maxlen)


def _group(name: str, members: Any, locations: dict[str, Location]) -> tuple[str, ...]:
    """A list of location ids (priority order), or a selector table ``{type = ..., region = ...}``."""
    if isinstance(members, dict):
        unknown = set(members) - {"type", "region"}
        if unknown:
            raise EstateError(f"groups.{name}: a selector takes only type and region, not {sorted(unknown)}")
        picked = tuple(loc.id for loc in locations.values()
                       if all(getattr(loc, k) == v for k, v in members.items()))
        if not picked:
            raise EstateError(f"groups.{name}: the selector {members} matches no location")
        return picked
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise EstateError(f"groups.{name}: must be a list of location ids or a selector table")
    for n, m in enumerate(members):
        if m not in locations:
            raise EstateError(f"groups.{name}: unknown location {m!r}")
        if m in members[:n]:  # its stock would be offered twice to a Reserve naming the group (R2)
            raise EstateError(f"groups.{name}: location {m!r} is listed twice")
    return tuple(members)


def _int(raw: dict[str, Any], key: str, where: str, default: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EstateError(f"{where}.{key}: must be an integer")
    if value > MAX_COUNT:
        raise EstateError(f"{where}.{key}: must be at most {MAX_COUNT}")
    return value


def _number(raw: dict[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # NaN: value != value
        raise EstateError(f"{where}.{key}: must be a number")
    if not math.isfinite(value):  # no bucket refills at an infinite rate (its burst is int(rate)): the desk ended
        raise EstateError(f"{where}.{key}: must be a finite number")
    return float(value)


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
    if value > MAX_COUNT:
        raise ValueError(f"{key}: must be at most {MAX_COUNT}")
    return value
