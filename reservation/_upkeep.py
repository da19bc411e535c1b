"""A ledger's upkeep between batches (``Ledger`` builds on it): remembered facts forgotten once past
the grace window (E8), kept deltas compacted (E9), and whether a maintenance turn has anything to do."""

from __future__ import annotations

from ._dedupe import FactMemory
from ._events import Event
from ._expiry import SetAside, expiry_stale
from ._facts import Histories
from ._limits import Limits

NOTHING_FORGOTTEN = -(1 << 63)
"""``Upkeep.forgotten_before`` of a ledger that has forgotten nothing (an int64, as a snapshot holds it)."""
COMPACT_PER_PASS = 4096
"""Kept deltas one maintenance pass looks at for E9 compaction: ~10 ms of a shard's turn at most
(``compact_ms`` of benchmarks/snapshot_stall.py)."""


class Upkeep:
    """What a ``Ledger``'s maintenance turns ask of it (mixed in: they need its state, nothing else)."""

    limits: Limits
    stream_time: int
    live_reservations: int
    memory: FactMemory
    histories: Histories
    _expiry: list[tuple[int, str]]
    _passed: list[tuple[int, str]]
    _set_aside: SetAside | None = None
    """While a sweep of stale expiry entries is part-way (``_expiry.sweeping``): the queue it set aside."""
    _events: list[Event]
    _quiet_since: list[Event] | None = None
    """The open batch in which ``housekeeping_wanted`` last found nothing to do, while what it reads has
    not changed since: a batch sealed or committed opens another (``Ledger.seal``), and every other
    change to it forgets this (``_unquiet``)."""

    forgotten_before: int = NOTHING_FORGOTTEN
    """E8, E9: the newest horizon at which this ledger forgot remembered facts or freed kept deltas (its
    snapshot's, restored). Facts stamped before it are late whatever the grace (``late_horizon``): one
    started again with a longer ``fact_grace_ms`` had forgotten some inside its window, and a resend of
    one applied it twice (E8); a count ordered before a delta freed took on_hand without it (E2)."""

    _alone_taken: tuple[list[Event], int, int] = ([], 0, 0)
    """The open batch (its events' list: a batch sealed or committed opens another), how many holds its
    Reserves' turns have taken to expire and how many stale expiry entries they dropped (``Ledger.due_alone``,
    ``EXPIRY_STALE_PER_TURN``), the checks made before its turn (``Ledger.due_first``) with them. Bounded
    per Reserve, a ReserveStream batch of 1,000 (one turn) expired up to 1,000 times ``EXPIRE_PER_TURN``
    holds in one go: minutes in which no shard, call or lease renewal ran (R8), one log entry of hundreds
    of MB."""

    def housekeeping_wanted(self) -> bool:
        """Remembered facts to forget (E8), kept deltas to compact (E9), stale expiry entries to drop.
        None of them depends on the time, only on the ledger's state: asked again (every shard, every
        housekeeping pass) with no change since it found nothing, it answers at once."""
        events = self._events
        if self._quiet_since is events and not events:  # no event since, nor other change
            return False
        horizon = max(self.stream_time - self.limits.fact_grace_ms, self.forgotten_before)  # ``_horizon``
        if self.memory.has_old(horizon) or self.histories.sweep_due(horizon) or \
                expiry_stale(len(self._expiry) + len(self._passed), self.live_reservations):
            return True
        if not events:  # between batches
            self._quiet_since = events
        return False

    def _unquiet(self) -> None:
        """What ``housekeeping_wanted`` reads may have changed outside a batch: ask it in full next time."""
        self._quiet_since = None

    def compact_some(self, limit: int = COMPACT_PER_PASS) -> int:
        """E9 for about ``limit`` kept deltas (``Histories.sweep``); between batches, none in flight."""
        assert not self._events, "compaction inside an open batch"
        self._unquiet()
        self.forgotten_before = horizon = self._horizon()
        return self.histories.sweep(horizon, limit, self._pass_every())

    def has_old_facts(self) -> bool:
        """Whether ``forget_old_facts`` would drop anything now."""
        return self.memory.has_old(self._horizon())

    def forget_old_facts(self) -> int:
        """E8 within bounded memory (``FactMemory.forget_old``). Only between batches: a batch that is
        undone must find what it knew."""
        assert not self._events, "forgetting inside an open batch"
        self._unquiet()
        self.forgotten_before = horizon = self._horizon()
        return self.memory.forget_old(horizon, self._pass_every())

    def late_horizon(self, stream_time: int) -> int:
        """E6: facts stamped before this are late at ``stream_time`` — stream time minus grace, and never
        before what this ledger forgot (``forgotten_before``, E8, E9)."""
        return max(stream_time - self.limits.fact_grace_ms, self.forgotten_before)

    def _horizon(self) -> int:
        """E6/E9: ``late_horizon`` now; facts stamped before it are late, history before it may go."""
        return self.late_horizon(self.stream_time)

    def _pass_every(self) -> int:
        """How far the horizon moves between two forgetting or compaction passes: a sixteenth of grace."""
        return max(1, self.limits.fact_grace_ms // 16)
