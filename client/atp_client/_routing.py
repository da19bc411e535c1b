"""Routing, as the API defines it: where a SKU's shard group is, which group is a reservation's
home, the metadata keys of redirects and forwarding, and what ``GetRouting`` answers.

The service may run as several processes on one keyspace, each owning some shard groups. A call
sent to a process that does not own its group is forwarded to the owner, or — with
``atp-routing: redirect`` — refused ``GROUP_MOVED`` with ``atp-moved: "<group> <owner>"`` in its
trailing metadata, so that a client routing by itself learns where to send it.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from atp_client.pb.atp.v1 import atp_pb2 as pb

PLACEMENT = "crc32-mod"
"""The placement ``GetRouting`` names: a SKU's group is the CRC-32 (zlib) of its UTF-8 bytes,
modulo the number of groups."""
ROUTING_KEY = "atp-routing"
"""Request metadata: ``redirect`` (``REDIRECT``) asks for a redirect instead of forwarding."""
REDIRECT = "redirect"
FORWARDED_KEY = "atp-forwarded"
"""Request metadata of a forwarded call: the forwarding process's address. Never forwarded again."""
MAX_GROUPS = 1024
"""The most shard groups a keyspace can have (the service's ``shards`` bound): a ``GetRouting``
answer naming more is not routed by (every call then goes to the process that answered)."""
MOVED_KEY = "atp-moved"
"""Trailing metadata of a ``GROUP_MOVED`` refusal: ``"<group> <owner address>"`` (address empty
while no process owns the group)."""

K = TypeVar("K")
V = TypeVar("V")


def place(sku: str, shards: int) -> int:
    """The shard group of ``sku`` among ``shards`` (``PLACEMENT``)."""
    return zlib.crc32(sku.encode()) % shards


def home_group(skus: Iterable[str], shards: int) -> int:
    """A reservation's home group: the lowest group among its lines' groups."""
    return min(place(sku, shards) for sku in skus)


def parse_moved(value: str | bytes) -> tuple[int, str] | None:
    """``atp-moved``'s ``(group, owner)`` (owner "" while none); None when it is not one."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    group, _, owner = text.strip().partition(" ")
    if not group.isdigit() or " " in owner.strip():
        return None
    return int(group), owner.strip()


def moved_of(trailers: Iterable[tuple[str, Any]] | None) -> tuple[int, str] | None:
    """The redirect a call's trailing metadata carries, if any."""
    for key, value in trailers or ():
        if key == MOVED_KEY:
            return parse_moved(value)
    return None


class Lru(Generic[K, V]):
    """A mapping of at most ``limit`` entries; adding past it drops the least recently used."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, busy: Callable[[V], bool] | None = None) -> tuple[K, V] | None:
        """Keep ``key``; returns the entry dropped to make room (None if none was): the least recently
        used one that is not ``busy`` — the least recently used of all when every other one is."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) <= self.limit:
            return None
        if busy is not None:
            for old in self._entries:
                if old != key and not busy(self._entries[old]):
                    return old, self._entries.pop(old)
        return self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def values(self) -> list[V]:
        return list(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True, slots=True)
class Routes:
    """What one ``GetRouting`` answered: the owner of each group ("" while none), and the address
    of the process that answered. ``routable`` is false for a placement this client does not know:
    then it routes nothing itself, and every call is forwarded by the service. ``max_availability_keys``:
    the answering process's limit on the keys of one ``GetAvailability`` (0: not told, by a service older
    than it)."""

    shards: int
    address: str
    owners: tuple[str, ...]
    routable: bool
    max_availability_keys: int = 0

    @classmethod
    def of(cls, answer: pb.GetRoutingResponse) -> Routes:
        if answer.shards > MAX_GROUPS:  # not a keyspace's: sized by it, the table could take gigabytes
            return cls(0, answer.address, (), False, answer.max_availability_keys)
        owners = [""] * answer.shards
        for route in answer.groups:
            if route.group < answer.shards:
                owners[route.group] = route.address
        return cls(answer.shards, answer.address, tuple(owners),
                   answer.placement == PLACEMENT and answer.shards > 0, answer.max_availability_keys)

    def home(self, skus: Iterable[str]) -> int | None:
        """The home group of a reservation of these SKUs; None when this client cannot tell."""
        skus = list(skus)
        return home_group(skus, self.shards) if self.routable and skus else None

    def owner(self, group: int | None) -> str:
        """The group's owner; "" when no process owns it now, or the group is unknown."""
        return self.owners[group] if group is not None and 0 <= group < len(self.owners) else ""

    def addresses(self) -> list[str]:
        """Every process this table names, the one that answered first."""
        return list(dict.fromkeys(a for a in (self.address, *self.owners) if a))
