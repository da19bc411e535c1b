"""What has ever been durable, followed event by event through the log's history (never trimmed).

Two reference checks need it:
- R2 / no oversell: a hold is granted only if it fits in ``available`` when decided, and what the
  shard decided on is what its log replays (E10). So, replaying the durable history one event at a
  time, ``available`` at a position is never below 0 right after a hold was granted there. Facts
  may take it below 0 afterwards (a sale stamped before the hold arrives late: oversold, Q5) — that
  is allowed, and so is any later grant only where units are free again.
- C4, while faults happen: the desk curates memory minus the batches in flight, which is the shard's
  state after its newest durable entry, and that entry only moves forward. So the values a channel
  stream receives for a key are curated values of that key after durable entries, in the log's order
  — never one of a batch that was undone, never an older one after a newer; and never a key that
  no durable position stands behind (a position only a batch in flight made is in no durable state).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from atp_service.channels.estate import Estate
from atp_service.engine.shard import ShardActor
from reservation import ChannelRules, ChannelUpdate, Key, Ledger, Limits, LogEntry, curate, decode_entry
from reservation._events import CountsLoaded, FactApplied, HoldMoved, SafetyStockSet, Shipped
from tests.sim.simlog import SimLog


class Violation(AssertionError):
    pass


def curated(estate: Estate, channel: str, available: dict[str, int]) -> int:
    """C1 for one key: ``available`` per location of the key (one location for a per-location
    channel; every location the SKU has for a network channel)."""
    ch = estate.channels[channel]
    if ch.per_location:
        units = sum(available.values())
    else:
        units = sum(max(a, 0) for loc, a in available.items() if loc in ch.sells_from)
    return _curate(ch.rules, units)


@functools.lru_cache(maxsize=4096)
def _curate(rules: ChannelRules, units: int) -> int:
    """The service's own ``curate``, one number at a time (few distinct numbers: cached)."""
    return int(curate(np.array([units], dtype=np.int64), rules)[0])


def channel_keys(estate: Estate, sku: str, location: str) -> list[tuple[str, Key]]:
    """The channel keys a position feeds."""
    out: list[tuple[str, Key]] = []
    for name, ch in estate.channels.items():
        if location in ch.sells_from:
            out.append((name, (sku, location) if ch.per_location else (sku, "")))
    return out


def available_of(ledger: Ledger, sku: str) -> dict[str, int]:
    return {loc: q.on_hand - q.reserved - q.committed - q.safety_stock
            for s, loc, q in ledger.store.items() if s == sku}


class DurableTracker:
    def __init__(self, log: SimLog, shards: int, limits: Limits, estate: Estate) -> None:
        self.log = log
        self.estate = estate
        self.ledgers = [Ledger(shard, limits) for shard in range(shards)]
        self.consumed = [0] * shards
        # per channel and key: its curated value after each durable entry that changed it (first: the
        # 0 before any), and how far the values published so far got in that list
        self.values: dict[str, dict[Key, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0]))
        self.cursor: dict[tuple[str, Key], int] = {}
        self.shown: Callable[[str, Key], bool] = lambda _channel, _key: False
        """Whether a channel's stream shows a key now (``World``: its state hash)."""

    def catch_up(self) -> None:
        for shard, ledger in enumerate(self.ledgers):
            entries = self.log.history[shard]
            while self.consumed[shard] < len(entries):
                seq, data = entries[self.consumed[shard]]
                self.consumed[shard] += 1
                self._replay(ledger, seq, decode_entry(data))

    def _replay(self, ledger: Ledger, seq: int, entry: LogEntry) -> None:
        touched: set[str] = set()
        for event in entry.events:
            ledger.replay(LogEntry(entry.ts, [event]))
            if isinstance(event, HoldMoved):
                touched.add(event.sku)
                if event.d_reserved > 0:
                    q = ledger.quantities(event.sku, event.location)
                    if q.on_hand - q.reserved - q.committed - q.safety_stock < 0:
                        raise Violation(f"R2: shard {ledger.shard} entry {seq} holds {event.d_reserved} at "
                                        f"{event.sku}@{event.location}, leaving {q} (oversold by a grant)")
            elif isinstance(event, FactApplied):
                touched.add(event.fact.sku)
            elif isinstance(event, (Shipped, SafetyStockSet)):
                touched.add(event.sku)
            elif isinstance(event, CountsLoaded):
                touched.update(event.skus)
        for sku in touched:
            available = available_of(ledger, sku)
            for loc in available:
                for channel, key in channel_keys(self.estate, sku, loc):
                    values = available if key[1] == "" else {loc: available[loc]}
                    value, points = curated(self.estate, channel, values), self.values[channel][key]
                    if points[-1] != value:
                        points.append(value)

    def published(self, channel: str, updates: list[ChannelUpdate]) -> None:
        """C4: each value a channel stream receives is the key's curated value after a durable entry no
        older than the one behind the value published before it."""
        self.catch_up()
        for u in updates:
            if u.key not in self.values[channel]:  # a key is made by a durable entry at a position behind it
                if u.quantity == 0 and self.shown(channel, u.key):
                    # A restarted desk withdrawing what an instance that had not yet noticed a loss of Redis's
                    # published from memory into the restored stream (``ChannelDesk._withdraw_uncurated``).
                    continue
                raise Violation(f"C4: channel {channel} published {u.key} = {u.quantity} (v{u.version}); no "
                                "durable entry ever made a position behind it")
            points, at = self.values[channel][u.key], self.cursor.get((channel, u.key), 0)
            try:
                self.cursor[(channel, u.key)] = points.index(u.quantity, at)
            except ValueError:
                raise Violation(f"C4: channel {channel} published {u.key} = {u.quantity} (v{u.version}); the "
                                f"durable log gave it {points[at:]} since the value published before "
                                f"(earlier: {points[:at]})") from None


class MemoryAheadOfLog:
    """C4's foundation, at any event-loop turn: a shard's memory minus the moves of its batches in flight
    and without the positions they made (both ``ShardActor.ahead_of_log``) is its durable state —
    the log up to the shard's own ``seq``. The desk curates exactly that; checked each round, mid-step,
    while appends fail and callers give up."""

    def __init__(self, log: SimLog, shards: int, limits: Limits) -> None:
        self.log = log
        self.ledgers = [Ledger(shard, limits) for shard in range(shards)]
        self.consumed = [0] * shards

    def check(self, actors: list[ShardActor]) -> None:
        for actor, ledger in zip(actors, self.ledgers, strict=True):
            self._advance(ledger, actor.seq)
            if not (actor._inflight or actor._doubt):
                continue  # memory is the log: E10 checks that after the step (this check is the costly one)
            ahead, made = actor.ahead_of_log() or ({}, set())
            memory = {(s, loc): q.available - ahead.get((s, loc), 0) for s, loc, q in actor.ledger.store.items()
                      if (s, loc) not in made}
            durable = {(s, loc): q.available for s, loc, q in ledger.store.items()}
            if memory.keys() != durable.keys():
                raise Violation(f"C4: shard {actor.shard} at entry {actor.seq}: positions in memory, not made by a "
                                f"batch in flight, and not in the log: {sorted(memory.keys() - durable.keys())}; "
                                f"in the log and not in memory: {sorted(durable.keys() - memory.keys())}")
            for key, available in memory.items():
                if available != durable[key]:
                    raise Violation(f"C4: shard {actor.shard} at entry {actor.seq}: {key} available in memory "
                                    f"minus in flight {available}, in the log {durable[key]}")

    def _advance(self, ledger: Ledger, seq: int) -> None:
        entries = self.log.history[ledger.shard]
        while self.consumed[ledger.shard] < len(entries) and entries[self.consumed[ledger.shard]][0] <= seq:
            ledger.replay(decode_entry(entries[self.consumed[ledger.shard]][1]))
            self.consumed[ledger.shard] += 1
