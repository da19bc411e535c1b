"""``--input-streams --lose-tail``: the one Redis behind the input streams and the shard logs comes back from older
data (a restart from an older AOF or RDB, a failover to a replica that lagged) — ``tailloss.py`` for the logs, here
for everything else the readers keep in it.

At a step's start Redis's state may be saved (``TailLoss.draw``): with the logs, snapshots, fences and owner key, the
input streams (their entries, consumer groups: last-delivered ids and pending lists), the quarantine stream and its
written sets, runs, ``…:runs-swept``, the dead letters, the owed hashes, answered marks and made-again marks
(``SimStreams``: its model of what Redis has done goes back with it). At a tick of a later step Redis comes back
from that image, all keys at once, as they live in one Redis.

What the contract says of what was lost (docs/OPERATIONS.md, "What acknowledged means"; docs/SEMANTICS.md R7): an
input entry Redis lost — its producer's ``XADD`` answered, then lost — is gone unless the producer sends it again;
this producer does not, so it is not expected (``Producer.facts`` cut back to the image: an entry lost is lost by the
contract, and an entry id past the image's may be taken again by a later ``XADD``). An entry that survived is
delivered again where its group's position or pending list went back, and must be applied or quarantined or
dead-lettered once per what survived: its fact's decision in the log, lost with it, is made again; one the log kept
is a duplicate (E8) — never one its shard's memory alone holds: a duplicate is answered only once its shard's log
is read reaching what the shard made durable (``intake/duplicates.py``). A shard whose memory holds entries Redis
lost finds its log short (``LogDiverged``, said) at its next write, a duplicate's read or its owner check, and the
service stops to be restarted (exit 4): until it has, its memory may hold what Redis lost (``TailLoss.stale``), so
the checks comparing memory with the log wait. An entry acknowledged meanwhile must have its fact durable in what
Redis holds (``InputsDriver._acked``), but for one whose fact was applied and answered before the loss, in the tail
Redis lost, and its acknowledgement landed after — sent by a consumer not given the entry since (``read_since``: the
other consumer given it since decides nothing of that XACK): that fact is lost with the tail, as the contract says of
every change acknowledged after Redis's save (the loss said by the shard's ``LogDiverged``), and left out of the end's
checks (``acked_lost``). By the step's end the instance
was restarted, or holds exactly what Redis holds (``replay_equals_live`` against a recovery).

With ``--processes 2|3`` (``inputcluster.py``) the image holds the groups' lease and owner keys too, and every key
comes back at once (one Redis: no node's restore alone). The service's notice is the leased one (``tailloss.py``): a
group whose log is found short is given up and taken again from what Redis holds, no process restarts, and by the
step's end every group's owner holds exactly what Redis holds (``replay.held_after_loss_leased``). An acknowledgement
taken while memory may hold what Redis lost is left out of the end's checks (``acked_lost``) where its fact was
applied — or quarantined, its quarantine entry written (read so before the loss: ``quarantined_before``) — in the
tail Redis lost, and the consumer acknowledging it was not given the entry since (``read_since``): another consumer
given it since decides it from what its process knows then.

Only with the flag: seeds without it replay as before (the loss draws from its own random stream).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from reservation import decode_entry
from reservation._events import FactApplied, FactQuarantined
from tests.sim.checks import Acknowledged
from tests.sim.cluster import ClusterWorld
from tests.sim.inputchecks import named
from tests.sim.replay import held_after_loss, held_after_loss_leased
from tests.sim.tailloss import TailLoss

if TYPE_CHECKING:
    from tests.sim.inputdriver import InputsDriver

_NOT_REDIS = ("faults", "on_ack", "now_ms", "on_failed_write", "given", "note_again", "tags", "refused_swept",
              "fenced", "refusals_elsewhere", "passes_cut", "letters")
"""``SimStreams``'s attributes that are no part of what Redis holds: kept across a restore."""


class InputsTail:
    def __init__(self, driver: InputsDriver, seed: int) -> None:
        self.driver = driver
        self.loss = TailLoss(seed, Acknowledged())
        self.image: tuple[dict[str, Any], dict[Any, Any], set[Any]] | None = None
        self.counts: dict[tuple[str, bytes], int] = {}  # pending entries' delivery counts as Redis came back
        self.given_since: dict[tuple[str, bytes], set[str]] = {}  # per entry, the consumers given it since then
        self.entries_lost = 0  # input entries Redis lost: read before, perhaps, their quarantine writes owed still
        self.gone: set[tuple[str, bytes]] = set()  # the input entries Redis lost (a reader may hold one still)
        self.letters_lost: set[tuple[str, bytes]] = set()
        """Entries whose dead letter Redis lost (written after its image: the letter and the entry's acknowledgement
        gone together, one script) while it kept the entry: pending again, or unread again, to be dead-lettered
        again (``inputchecks.dead_lettered``)."""
        noted = driver.redis.note_again

        def note_again(stream: str, held: Any, entry_id: bytes, consumer: str) -> None:
            noted(stream, held, entry_id, consumer)
            self.given_since.setdefault((stream, entry_id), set()).add(consumer)

        driver.redis.note_again = note_again  # type: ignore[method-assign]
        world = driver.world
        world.tail = self.loss
        self.loss.witnessed = world.witnessed_loss
        world.lose_tail = self.lose  # type: ignore[method-assign]  # at the tick drawn (``World.on_tick``)

    def draw(self) -> str:
        """At a step's start: Redis's state saved now, or the tick drawn at which it comes back from the image."""
        world, redis, producer = self.driver.world, self.driver.redis, self.driver.producer
        drawn = self.loss.draw(world.log, world.channels, world.lease_keys())
        if isinstance(world, ClusterWorld):  # the ticks of the processes' owner checks; the input streams' Redis
            self.loss.draw_leased(world.config.shards)  # is one: every key comes back together, leases too
            self.loss.groups = None
        if self.loss.image is not None and self.image is None:
            kept = {name: value for name, value in vars(redis).items() if name not in _NOT_REDIS}
            self.image = copy.deepcopy(kept), dict(producer.facts), set(producer.malformed)
        return drawn

    def lose(self) -> None:
        """Redis comes back from the image: the logs (``TailLoss.restore``) and every input-stream key together."""
        driver = self.driver
        assert self.loss.image is not None
        kept = self.loss.image.history
        for shard, entries in driver.world.log.history.items():  # the tail lost: what the log had decided in it
            events = [e for _, data in entries[kept.get(shard, 0):] for e in decode_entry(data).events]
            driver.applied_lost |= {named(e.fact) for e in events if isinstance(e, FactApplied)}
            driver.quarantined_lost |= {named(e.fact) for e in events if isinstance(e, FactQuarantined)}
        type(driver.world).lose_tail(driver.world)  # the class's: this method is the instance's
        assert self.image is not None
        kept, facts, malformed = self.image
        self.image = None
        letters = driver.redis.dead_letters
        vars(driver.redis).update(copy.deepcopy(kept))
        gone = {(f["_stream"], f["_id"].encode()) for _, f in letters[len(driver.redis.dead_letters):]}
        self.letters_lost |= {entry for entry in gone if entry in facts or entry in malformed}  # read again
        driver.redis.tags.restarted()
        driver.redis.letters.restarted()
        lost = [entry for entry in driver.producer.facts if entry not in facts]
        lost += [entry for entry in driver.producer.malformed if entry not in malformed]
        driver.lost_positions |= {(fact.sku, fact.location) for entry, fact in driver.producer.facts.items()
                                  if entry not in facts}  # read before the loss, its fact may land after it
        driver.producer.read_lost |= {entry: fact for entry, fact in driver.producer.facts.items()
                                      if entry not in facts and driver.redis.given.get(entry)}
        driver.producer.facts, driver.producer.malformed = facts, malformed  # lost: the producer sends none again
        driver.tally.input_entries_lost += len(lost)
        self.entries_lost += len(lost)
        self.gone.update(lost)
        driver._seen, driver._applied, driver._quarantined = {}, set(), set()  # the log's history cut back
        driver.owed.lost_redis()
        self.counts, self.given_since = self._counts(), {}
        driver.trace.append(f"Redis came back from older data: {len(lost)} input entries lost")

    def _counts(self) -> dict[tuple[str, bytes], int]:
        """Each pending entry's delivery count (its greatest over the groups)."""
        counts: dict[tuple[str, bytes], int] = {}
        for stream, held in self.driver.redis.streams.items():
            for group in held.groups.values():
                for entry_id, holder in group.pending.items():
                    counts[(stream, entry_id)] = max(counts.get((stream, entry_id), 0), holder[1])
        return counts

    def read_since(self, stream: str, entry_id: bytes, consumer: str | None = None) -> bool:
        """Whether the entry was delivered (read, read again, claimed) since Redis last came back from older data — to
        ``consumer``, the one whose acknowledgement this is (None: to any): a decision of it since is made from what
        its process knows then, which must not be what Redis lost. Several processes: another consumer given it since
        does not make the acknowledgement of one that decided it before (from what it was given then) a decision
        made since."""
        if consumer is not None:
            return consumer in self.given_since.get((stream, entry_id), set())
        return self._counts().get((stream, entry_id), 0) > self.counts.get((stream, entry_id), 0)

    def due_at_end(self) -> bool:
        """The step ended before the tick drawn: Redis comes back now."""
        if self.loss.due(None):
            self.lose()
            return True
        return False

    async def after(self, step: int) -> None:
        """By the step's end (the owner check run, as it runs every owner_check_s) the instance stopped to be
        restarted, or holds only what Redis holds."""
        driver, world = self.driver, self.driver.world
        if isinstance(world, ClusterWorld):
            await held_after_loss_leased(world, self.loss, driver.trace, step)
            return
        if not self.loss.lost_since_start:
            return
        said = "the service stopped to be restarted after Redis lost a tail"
        await held_after_loss(world, lambda: driver.restart(step, said))

