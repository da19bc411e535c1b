"""The service timestamps each shard group's log entries carry, checked against R6 and R3 whatever the
processes' clocks say (``skew.py``): every entry a group ever logged (``SimLog.history``, cut back with
Redis when it lost a tail) is stamped no lower than the one before it in that group (R6: never below a
timestamp already logged), and no hold is expired by an entry stamped before its expiry (R3: a TTL
counts from the group's own stamps). In the world's time a hold may expire up to the skew early or late
across a takeover (docs/SEMANTICS.md R6): that is the documented limit, not checked here.

Incremental: each group's entries are decoded once; a history cut back (a tail lost) is read again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reservation import Outcome, Reservation, State, decode_entry
from reservation._events import ReservationSaved
from tests.sim.checks import Violation
from tests.sim.simlog import SimLog


@dataclass
class _GroupStamps:
    seen: list[tuple[int, bytes]] = field(default_factory=list)  # the history entries read so far
    newest: int = 0  # the newest stamp among them
    holds: dict[str, Reservation] = field(default_factory=dict)  # each reservation's last saved version


class StampChecker:
    def __init__(self, log: SimLog) -> None:
        self._log = log
        self._groups: dict[int, _GroupStamps] = {}

    def check(self) -> None:
        for shard, entries in self._log.history.items():
            group = self._groups.get(shard)
            if group is None or len(entries) < len(group.seen) or any(
                    a is not b for a, b in zip(entries, group.seen, strict=False)):
                group = self._groups[shard] = _GroupStamps()  # new, or cut back: read again
            for seq, data in entries[len(group.seen):]:
                _read(shard, seq, data, group)
                group.seen.append((seq, data))


def _read(shard: int, seq: int, data: bytes, group: _GroupStamps) -> None:
    entry = decode_entry(data)
    if entry.ts < group.newest:
        raise Violation(f"R6: group {shard}'s entry {seq} is stamped {entry.ts}, below {group.newest} "
                        f"already logged there ({group.newest - entry.ts} ms)")
    group.newest = entry.ts
    for event in entry.events:
        if not isinstance(event, ReservationSaved):
            continue
        rec, before = event.reservation, group.holds.get(event.reservation.reservation_id)
        if (before is not None and before.state == State.HELD and rec.state == State.EXPIRED
                and 0 < entry.ts < before.expires_at and not _given_up(rec)):
            raise Violation(f"R3: {rec.reservation_id} expired by group {shard}'s entry {seq} stamped {entry.ts}, "
                            f"{before.expires_at - entry.ts} ms before its expiry {before.expires_at}")
        group.holds[rec.reservation_id] = rec


def _given_up(rec: Reservation) -> bool:
    """An order given up whole (``reservation/_orders.py abandoned``: Redis lost a part it granted, or a
    part's id was taken by other content) expires at once by design, whatever its TTL: every line
    left ungranted, not attempted. Not a TTL counted on a wrong clock."""
    return rec.is_order and all(line.outcome == Outcome.NOT_ATTEMPTED and not line.granted for line in rec.lines)
