"""The facts and shipments of the log's history (``SimLog.history``), each entry read once.

Two checks run after every step read every fact the log ever recorded: R7's that each acknowledged fact is
in the log (``checks.acknowledged_survive``), and E1-E3/E8's fold of each position's facts
(``checks.facts_fold_as_the_reference``). Decoding the whole history again each step made them grow with the
run, a tenth of a seed's time. ``HistoryFacts`` reads each shard's history on from where it read it while what
it read is still its start (compared by value: an entry decodes to what its bytes say); a history cut back or
otherwise changed (a tail lost, ``tailloss.py``) is read again from the start, every shard's.

What it keeps answers as a fresh read does: the set of fact identities logged, and per position the fold's
items. A position's expected on_hand depends on its items' multiset only: they are sorted by their key
(event time, rank, source, event id), two of equal key are two deltas (a count's key is its identity's, E8) or
a fact applied twice, which the fresh fold is left to report. Wherever the kept fold finds anything to
report, the fresh one runs and reports it, word for word as before (``checks.facts_fold_as_the_reference``).
"""

from __future__ import annotations

from reservation import FactKind, decode_entry
from reservation._bulk import loaded_facts
from reservation._events import CountsLoaded, FactApplied, Shipped
from tests.sim.simlog import SimLog

Item = tuple[tuple[int, int, str, str], int, bool]
"""One item of a position's fold: its order key, its quantity (a count's) or delta, whether it is a count."""


class HistoryFacts:
    def __init__(self, log: SimLog) -> None:
        self._log = log
        self.read_again = 0
        """How many times a history no longer began with what was read had it read again from the start."""
        self._start_over()

    def _start_over(self) -> None:
        self._read: dict[int, list[tuple[int, bytes]]] = {}  # per shard, the history entries read
        self.ids: set[tuple[str, str]] = set()
        """(source, event_id) of every fact logged (``World.logged_facts``'s)."""
        self.items: dict[tuple[str, str], list[Item]] = {}
        """Per position, the fold's items (``checks.facts_fold_as_the_reference``), in the order read."""
        self.applied: set[tuple[str, str, str, str]] = set()  # E8: each identity applied, per position
        self.twice = False
        """An identity applied twice (E8): the fresh fold reports it."""
        self.expected: dict[tuple[str, str], int] = {}
        """Per position, the fold's on_hand, of the items read when it was last computed."""
        self._changed: set[tuple[str, str]] = set()  # positions with items read since

    def catch_up(self) -> None:
        history = self._log.history
        for shard, read in self._read.items():
            entries = history.get(shard, [])  # ``get``: the defaultdict made no shard
            if len(entries) < len(read) or entries[:len(read)] != read:
                self._start_over()
                self.read_again += 1
                break
        try:
            for shard, entries in history.items():
                read = self._read.setdefault(shard, [])
                for item in entries[len(read):]:
                    self._entry(item[1])
                    read.append(item)
        except BaseException:
            self._start_over()  # an entry read in part: all again at the next call
            raise

    def _entry(self, data: bytes) -> None:
        for e in decode_entry(data).events:
            if isinstance(e, Shipped):
                self._add((e.sku, e.location), ((e.at, 0, "", e.ref), -e.quantity, False))
                continue
            facts = [e.fact] if isinstance(e, FactApplied) else loaded_facts(e) if isinstance(e, CountsLoaded) else []
            for f in facts:
                self.ids.add((f.source, f.event_id))
                identity = (f.source, f.event_id, f.sku, f.location)
                if identity in self.applied:
                    self.twice = True
                    continue
                self.applied.add(identity)
                is_count = f.kind == FactKind.COUNT
                self._add((f.sku, f.location), ((f.event_time, 1 if is_count else 0, f.source, f.event_id),
                                                f.quantity if is_count else f.delta, is_count))

    def _add(self, position: tuple[str, str], item: Item) -> None:
        self.items.setdefault(position, []).append(item)
        self._changed.add(position)

    def folded(self) -> dict[tuple[str, str], int]:
        """Per position, the on_hand the fold of its items gives (as ``facts_fold_as_the_reference`` folds)."""
        for position in self._changed:
            items = sorted(self.items[position], key=lambda item: item[0])
            last_count = max((i for i, item in enumerate(items) if item[2]), default=None)
            if last_count is None:
                self.expected[position] = sum(q for _, q, _ in items)
            else:
                self.expected[position] = items[last_count][1] + sum(q for _, q, c in items[last_count + 1:] if not c)
        self._changed.clear()
        return self.expected
