"""``atp_oversold_units`` (Q5: never hidden) kept current a bounded slice of the arrays at a time.

Summed over every position of every shard in one go, once a second, the gauge held the event loop
(every shard, call and lease renewal) for ~2.6 ms per million positions: ~13 ms at 5 M positions,
~80 ms every second at the 30 M estate on 16 shards (``benchmarks/RESULTS.md``), a stall that
``ATPEventLoopLag`` is about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from reservation import PositionStore

OVERSOLD_SLOTS_PER_PASS = 1_000_000
"""Position slots one housekeeping pass sums for ``atp_oversold_units``, at most (~2.5 ms of numpy);
the sweep goes on where it stopped at the next pass. At the default 100 ms period a 30 M estate is
swept in about 3 s (the ``ATPOversold`` alert waits a minute); a shard's part of the gauge changes
when its own sweep ends, so the gauge never shows a half-summed shard."""
OVERSOLD_SWEEP_EVERY_S = 1.0
"""A sweep over every shard begins at most this often. Housekeeping passes come every 100 ms by
default, and an estate small enough to be swept in one pass was swept at each: 16 shards' numpy
passes ten times a second, a fifth of an idle process's CPU, for a gauge scraped every 15 s or so
and alerted on after a minute. An estate larger than one pass's slots is swept as before, a slice
a pass, and begins its next sweep as soon as this long has passed since the last one began."""


class HasPositions(Protocol):
    def positions(self) -> PositionStore: ...


class OversoldSweep:
    """Sums oversold units shard after shard, at most ``slots_per_pass`` slots per ``step``."""

    def __init__(self, shards: Sequence[HasPositions], slots_per_pass: int | None = None,
                 every_s: float | None = None) -> None:
        slots_per_pass = OVERSOLD_SLOTS_PER_PASS if slots_per_pass is None else slots_per_pass
        every_s = OVERSOLD_SWEEP_EVERY_S if every_s is None else every_s
        if slots_per_pass < 1:
            raise ValueError(f"slots_per_pass: must be at least 1, got {slots_per_pass}")
        if every_s < 0:
            raise ValueError(f"every_s: must be at least 0, got {every_s}")
        self._shards, self._slots_per_pass, self._every_s = shards, slots_per_pass, every_s
        self._began: float | None = None  # when the sweep in progress (or the last one) began
        self._summed = [0] * len(shards)
        """Per shard: the oversold units of its last complete sweep."""
        self._shard = self._at = self._partial = 0  # the sweep in progress: which shard, how far, its sum
        self._store: PositionStore | None = None  # the store being swept (a recovery may replace it)

    def step(self, now: float) -> int:
        """Sum the next slots (``slots_per_pass`` at most, over one shard or several) unless a sweep
        over every shard began less than ``every_s`` before ``now`` (monotonic seconds) and has ended;
        returns the oversold units over all shards as of each one's last complete sweep."""
        if self._shard == 0 and self._store is None:  # between sweeps
            if self._began is not None and now - self._began < self._every_s:
                return sum(self._summed)
            self._began = now
        # The sweep's place in locals, written back once (every second, over every shard in one step).
        budget, shards, count = self._slots_per_pass, self._shards, len(self._shards)
        shard, store, at, partial = self._shard, self._store, self._at, self._partial
        for _ in range(count):
            if budget <= 0:
                break
            positions = shards[shard].positions()
            if positions is not store:  # a new sweep of this shard (or its store was replaced: anew)
                store, at, partial = positions, 0, 0
            slots = store.slots
            stop = at + budget if at + budget < slots else slots
            partial += store.oversold_units(at, stop)
            budget -= stop - at or 1  # an empty shard costs a little too: the budget always runs out
            at = stop
            if stop < slots:  # the rest of this shard at the next step
                break
            self._summed[shard] = partial
            shard, store = (shard + 1) % count, None
            if shard == 0:  # the sweep ended: the next begins no sooner than ``every_s`` after this one
                break
        self._shard, self._store, self._at, self._partial = shard, store, at, partial
        return sum(self._summed)
