"""``--input-streams``: the entries whose quarantine write was refused or its answer lost, while the process that wrote
them lives.

Such a write is owed (``QuarantineStream.owed``): the process writes it again, with its entry's acknowledgement, before
it reads its pending entries again (``write_owed``, ``not_owed``). Read again first, the entry's fact would be decided
again: quarantined again in its shard log, or applied had room come back meanwhile (the other process lives on through
the owner's restart that raises the shards' bound), while the stream may hold it already (E8: decided once). A restart
forgets what it owed, by design: the entries a process owed are watched while it lives. One another consumer claimed
since (that one decides it), one whose group was deleted since it was read (``XGROUP DESTROY``, before the write failed
or after: the write finds it pending nowhere, and the group made again delivers it as new), one another consumer was
given before the write failed (its process may hold it in memory and decide it still: a batch of it in flight — its
process stopped meanwhile — after this one claimed it, or after the group was deleted and made again), one whose
fact has another entry (that one decides it too), one whose delivery to its writer Redis lost coming back from older
data (``inputtail``: pending to it no more, delivered anew) and one whose write was refused since for its run
(``quarantine._ONCE``: a sweep took the process for gone while it was stopped; the answer says the stream does not
hold the fact, and no write of that run lands later: fenced, the entry is decided again from what landed, as a
claimer decides it) are left out. Watched: the fact of such an entry is
neither applied nor quarantined again while its writer lives (``applied``), and at the end, Redis answering, it is in
the quarantine stream and the entry acknowledged (``written``), the stream holding it once (``inputchecks``).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from atp_service.intake.quarantine import _PER_FACT
from reservation import decode_entry
from reservation._events import FactQuarantined
from tests.sim.checks import Violation
from tests.sim.inputchecks import entries_of, named, named_fields

if TYPE_CHECKING:
    from tests.sim.inputdriver import InputsDriver
    from tests.sim.inputstreams import SimStreams

Entry = tuple[str, bytes]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OwedWatch:
    def __init__(self, driver: InputsDriver) -> None:
        self.driver = driver
        self.lost: dict[Entry, tuple[str, int, int, int, int]] = {}
        """Entry -> (the consumer whose write failed, claims Redis had taken by then and group deletions before its
        read, the quarantines of its fact the log held by then, its writes refused for their run by then)."""
        self.seen = 0  # entries watched in a seed (for the tally)
        self._quarantines: Counter[tuple[str, str, str, str, int]] = Counter()  # FactQuarantined in the log, a fact
        self._read: dict[int, int] = {}  # per shard, the history entries counted

    def quarantines(self, entry: Entry) -> int:
        """The quarantines of ``entry``'s fact its shard log holds (landed)."""
        for shard, entries in self.driver.world.log.history.items():
            for _, data in entries[self._read.get(shard, 0):]:
                self._quarantines.update(named(e.fact) for e in decode_entry(data).events
                                         if isinstance(e, FactQuarantined))
            self._read[shard] = len(entries)
        return self._quarantines[named(self.driver.producer.facts[entry])]

    def failed(self, redis: SimStreams, keys: list[str], args: list[Any]) -> None:
        """A quarantine script call (``quarantine._ONCE``) refused or its answer lost: its facts' entries owed."""
        consumer = _text(args[2])
        for at in range(4, len(args), _PER_FACT):  # after MAXLEN, group, consumer, run
            if (index := int(args[at + 1])) > 0:
                entry = keys[index - 1], _text(args[at + 2]).encode()
                if entry not in self.driver.producer.facts:
                    continue  # an entry Redis lost coming back from older data (``inputtail``): none to decide
                if redis.given.get(entry, set()) - {consumer}:
                    continue  # another consumer was given it before: its process may decide it still, from memory
                if self._read_lost(redis, entry, consumer):
                    continue  # its delivery gone with Redis's older data: its group delivers it anew (decided again)
                # its group deleted since this consumer first read it (before the write, or after): left out too, also
                # where the group made again delivered it meanwhile, to another consumer or to this one in a batch of
                # its own (decided again by design, as the reader's own: E8 by the made-again mark only once written)
                deletions = redis.read_after.get((*entry, consumer), len(redis.groups_lost))
                self.lost[entry] = (consumer, redis.taken.get(entry, 0), deletions, self.quarantines(entry),
                                    redis.fenced.get((*entry, consumer), 0))
                self.seen += 1

    def _read_lost(self, redis: SimStreams, entry: Entry, consumer: str) -> bool:
        """Whether ``consumer`` read ``entry`` before Redis last came back from older data (``inputtail``: given it
        not since) and Redis holds it pending to it no more: that delivery was lost with the tail (the group's
        position and pending list went back to before it), so the write answers it pending elsewhere (-1) and is not
        owed for long — the reader drops it, and the group delivers the entry anew, to be decided again."""
        tail = self.driver.tail
        if tail is None or not tail.loss.losses or consumer in tail.given_since.get(entry, set()):
            return False
        held = redis.streams.get(entry[0])
        groups = held.groups.values() if held is not None else []
        return not any(group.pending.get(entry[1], [None])[0] == consumer for group in groups)

    def lost_redis(self) -> None:
        """Redis came back from older data (``inputtail``): the log's history cut back, its quarantines counted again;
        the entries owed before are left out (their writes, or the decisions they follow, may be what Redis lost)."""
        self.lost, self._quarantines, self._read = {}, Counter(), {}

    def forget(self, consumer: str) -> None:
        """``consumer``'s process restarted: what it owed forgotten (by design)."""
        self.lost = {entry: held for entry, held in self.lost.items() if held[0] != consumer}

    def _still_owed(self, driver: InputsDriver) -> list[tuple[Entry, str, int]]:
        """The watched entries still their writer's, whose fact has no other entry (a duplicate's entry decides it)."""
        redis, facts = driver.redis, driver.producer.facts
        several = entries_of(driver)
        out = []
        for entry, (consumer, claims, deletions, quarantines, fenced) in self.lost.items():
            if redis.taken.get(entry, 0) > claims or several[named(facts[entry])[:4]] > 1:
                continue
            if redis.fenced.get((*entry, consumer), 0) > fenced:  # its run fenced since: decided again
                continue
            if any(stream == entry[0] for stream, _, _ in redis.groups_lost[deletions:]):
                continue
            out.append((entry, consumer, quarantines))
        return out

    def applied(self, driver: InputsDriver) -> None:
        """No watched entry's fact decided again while its writer lives: never applied, quarantined no more often."""
        driver._index()
        for (stream, entry_id), consumer, quarantines in self._still_owed(driver):
            fact = driver.producer.facts[(stream, entry_id)]
            if named(fact) in driver._applied or self.quarantines((stream, entry_id)) > quarantines:
                raise Violation(f"E8: entry {stream} {entry_id.decode()} ({fact.source}/{fact.event_id}), its "
                                f"quarantine write by {consumer} failed (owed), decided again while that process "
                                f"lives: {'applied' if named(fact) in driver._applied else 'quarantined again'}")

    def written(self, driver: InputsDriver) -> None:
        """Redis answering, nothing pending: every watched entry's fact in the quarantine stream, the entry acked."""
        self.applied(driver)
        redis = driver.redis
        held = {named_fields(fields) for _, fields, _ in redis.quarantined}
        done = set(redis.acked) | redis.acked_unheld
        for (stream, entry_id), consumer, _ in self._still_owed(driver):
            fact = driver.producer.facts[(stream, entry_id)]
            if named(fact) not in held or (stream, entry_id) not in done:
                raise Violation(f"E6/E8: entry {stream} {entry_id.decode()} ({fact.source}/{fact.event_id}), its "
                                f"quarantine write by {consumer} failed (owed), "
                                f"{'not acknowledged' if named(fact) in held else 'not in the quarantine stream'}")
