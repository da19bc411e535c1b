"""E8: which fact identities were applied, and with what payload, for at least the grace window.

A position's latest count is remembered by its columns in the store (its source and event_id are
there anyway, for E1), so it needs no entry here: a re-sent baseline costs no memory. Every other
fact — deltas, counts that were absorbed, and a count once a newer one supersedes it — has one
entry, in arrival order, until its event time falls behind stream time minus grace.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._keys import Payload, pack_payload, pair_key, payload_time, unpack_payload
from ._model import FactKind
from ._store import LatestCount, PositionStore

_COUNT = int(FactKind.COUNT)
_SEP = "\x00"


class FactMemory:
    """Remembered identities (``fact_key``) and payloads (``fact_payload``)."""

    __slots__ = ("seen", "store")

    def __init__(self, store: PositionStore, seen: dict[str, Payload] | None = None) -> None:
        self.store = store
        self.seen: dict[str, Payload] = seen if seen is not None else {}
        """fact_key -> fact_payload, in arrival order (a snapshot carries it as it is)."""

    def __len__(self) -> int:
        return len(self.seen)

    def payload(self, key: str, source: str, event_id: str, sku: str, location: str) -> Payload | None:
        """The payload applied under this identity at this position (None: never applied)."""
        seen = self.seen.get(key)
        if seen is not None:
            return seen
        cell = self.store.locate(sku, location)
        count = None if cell is None else self.store.count_at(*cell)
        if count is not None and count[1] == source and count[2] == event_id:
            return pack_payload(count[0], _COUNT, count[3], "")
        return None

    def remember(self, key: str, payload: Payload) -> None:
        self.seen[key] = payload

    def remember_superseded(self, sku: str, location: str, count: LatestCount) -> str:
        """A count no longer the latest keeps its identity here (E8 still covers it); returns its key."""
        at, source, event_id, quantity = count
        key = f"{source}{_SEP}{event_id}{_SEP}{pair_key(sku, location)}"
        self.seen[key] = pack_payload(at, _COUNT, quantity, "")
        return key

    def drop(self, key: str) -> None:
        self.seen.pop(key, None)

    def has_old(self, horizon: int) -> bool:
        """Whether ``forget_old`` would drop anything now (its sweep starts at the oldest arrival)."""
        oldest = next(iter(self.seen.values()), None)
        return oldest is not None and payload_time(oldest) < horizon

    def forget_old(self, horizon: int) -> int:
        """Drop remembered facts stamped before ``horizon`` (a duplicate of one would be late, E6,
        and quarantined, never applied). Oldest arrivals first; one still inside the window stops the
        sweep, so memory stays within about one grace window of arrivals."""
        gone = []
        for key, payload in self.seen.items():
            if payload_time(payload) >= horizon:
                break
            gone.append(key)
        for key in gone:
            del self.seen[key]
        return len(gone)

    def facts_at(self, sku: str, location: str) -> Iterator[tuple[str, str, int, int, int]]:
        """(source, event_id, event_time, kind, quantity) of each fact remembered at the position:
        a scan of the whole map, for an operator's ExplainAvailability, never on a hot path."""
        suffix = f"{_SEP}{pair_key(sku, location)}"
        for key, payload in self.seen.items():
            if key.endswith(suffix):
                source, event_id, _ = key.split(_SEP, 2)
                yield (source, event_id, *unpack_payload(payload))
