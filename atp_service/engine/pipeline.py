"""A shard's pipelined group commit: each turn's batch is sealed into a log entry and sent while
the shard goes on; entries are answered in order once durable, and a failed append takes back
every batch after it too and leaves them in doubt until settled (R7). ``ShardActor`` builds on it."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from atp_service.engine.listeners import EntryListeners
from atp_service.engine.messages import Answer, InFlight, Sealed, deliver, refused_for_memory, replaced
from atp_service.engine.turn import moves_of
from atp_service.logs import EveryInterval
from atp_service.metrics import EngineMetrics
from atp_service.storage.durability import append_failure_reason
from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.resp import out_of_memory, slot_not_served
from reservation import Ledger, LogEntry, Moved, Reason, Unavailable, encode_entry
from reservation._events import saved_since

log = logging.getLogger(__name__)

APPEND_FAILURE_LOG_EVERY_S = 10.0
"""A shard writes at most one ``append_failed`` line this often, the next saying how many were left
out: a full Redis refuses every write, and a line for each flooded the log."""


class CommitPipeline(EntryListeners):
    """The batches of one shard in flight to its log, and those in doubt."""

    def __init__(self, shard: int, ledger: Ledger, log_store: LogStore, seq: int, metrics: EngineMetrics) -> None:
        super().__init__(shard)
        self.ledger = ledger
        self.seq = seq  # the last entry durable in this shard's log
        self.durable_data: bytes | None = None  # entry ``seq`` as this shard made it durable (None: recovered)
        self._log = log_store
        self._metrics = metrics
        self._inflight: deque[InFlight] = deque()  # appended, not yet durable; oldest first
        self._doubt: list[tuple[int, LogEntry, bytes]] = []  # failed appends that may have landed
        self._failure_lines = EveryInterval(APPEND_FAILURE_LOG_EVERY_S)
        # Answers delivered to a reply cancelled meanwhile, kept till its caller's step has run (``answer_kept``).
        self._dropped: dict[asyncio.Future[Any], tuple[Any, BaseException | None]] = {}

    def ahead_of_log(self) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]] | None:
        """Per position, how far memory's ``available`` is ahead of the durable log: the moves of
        the batches in flight; and the positions they made, absent from the durable log, not even 0
        (None: none in flight). Channels take both off: they publish only durable state (C4), and a
        batch in flight may yet be undone."""
        return moves_of(self._inflight) if self._inflight else None

    def in_flight_since(self) -> int | None:
        """The timestamp of the oldest entry in flight, or of a record one saves if older (an order's saga
        stamps its decision before the turn that saves it; None: none in flight): what they changed may yet
        be taken back (R7), so retention forgets nothing they resolved (``Ledger.evict``)."""
        if not self._inflight:
            return None
        return min(saved_since(rec.entry.events, rec.entry.ts, None) for rec in self._inflight)

    def sent_top(self) -> int:
        """The newest entry of this shard that may be in its log: durable, in flight, or in doubt (an
        entry given up after a settle's fence cannot land: the fence refuses it)."""
        tops = [self.seq] + [rec.seq for rec in self._inflight] + [seq for seq, _, _ in self._doubt]
        return max(tops)

    @property
    def in_doubt(self) -> bool:
        """Appends failed and are not yet settled: the log is unreachable from here."""
        return bool(self._doubt)

    def answer_kept(self, reply: asyncio.Future[Any]) -> asyncio.Future[Any] | None:
        """A future of its own for the answer ``reply``'s caller gave up waiting for once its turn had decided it
        (``reply`` cancelled: the answer is dropped), answered as ``reply`` would have been: once durable, in order,
        or refused with its entry taken back (R7). None where it was never decided (skipped in its turn,
        ``apply_batch``). Bounded: ``pipeline_depth`` entries of ``batch_max``. Its batch answered between the
        cancellation and its task's step that asks this (both in one loop turn: a deadline passing as the append's
        answer comes), the answer ``_deliver`` kept for that step."""
        kept: asyncio.Future[Any] = reply.get_loop().create_future()
        for rec in self._inflight:
            answers = rec.answers
            for n, (answered, result, refusal) in enumerate(answers):
                if answered is reply:
                    answers[n] = (kept, result, refusal)
                    return kept
        dropped = self._dropped.pop(reply, None)
        if dropped is None:
            return None
        deliver([(kept, *dropped)])
        return kept

    def _deliver(self, reply: asyncio.Future[Any], result: Any, refusal: BaseException | None) -> None:
        """``reply`` answered; cancelled by its caller, its answer kept for ``answer_kept`` till the step after this
        one's: the caller's task, woken by the cancellation before this ran (call_soon's order), asks before. Others
        (a change's, a fact's) never ask: dropped then."""
        if not reply.done():
            if refusal is None:
                reply.set_result(result)
            else:
                reply.set_exception(refusal)
        elif reply.cancelled():  # its own clear, queued after its caller's wake-up (one for all cleared a later
            reply.get_loop().call_soon(self._dropped.pop, reply, None)  # reply's, cancelled after it, too soon)
            self._dropped[reply] = (result, refusal)

    # -- a cross-shard change: a coordinator holds this shard paused (nothing in flight) --------
    def seal_part(self, now: int) -> Sealed | None:
        """Seal the open batch as this shard's part of a cross-shard change (None: nothing to log)."""
        if not self.ledger.pending:
            self.ledger.commit(now)
            return None
        assert not self._inflight, "a paused shard has nothing in flight"
        entry, undo, moved = self.ledger.seal(now)
        return Sealed(self.seq + 1, entry, encode_entry(entry), undo, moved)

    def track_part(self, part: Sealed, done: asyncio.Future[None]) -> None:
        """Follow a sealed part to its end like any batch of this shard: durable, or undone and
        settled — whatever happens to the coordinator that sent it (R8)."""
        self._inflight.append(InFlight(part.seq, part.entry, part.data, part.undo, part.moved, [], done))
        done.add_done_callback(self._on_append_done)

    def _seal(self, now: int, answers: list[Answer]) -> None:
        """Send the open batch to the log and go on; its callers are answered once it is durable
        and every entry before it is (R7). Answers of a batch with nothing to log wait behind
        the newest entry in flight: a replayed decision must not be acknowledged before it is durable."""
        entry, undo, moved = self.ledger.seal(now)  # (without ``pending``'s frame first: every turn's)
        if not entry.events:  # nothing to log: its undo steps dropped, as ``Ledger.commit`` drops them
            if self._inflight:
                self._inflight[-1].answers.extend(answers)
            else:
                deliver(answers)
            return
        seq = self.seq + 1 + len(self._inflight)
        data = encode_entry(entry)
        # Settled, the log calls _on_append_done at once: a done callback would cost the reply a loop turn.
        done = self._log.submit(self.shard, seq, data, self._on_append_done)
        self._inflight.append(InFlight(seq, entry, data, undo, moved, answers, done))

    def _on_append_done(self, _: object = None) -> None:
        """Settle finished appends oldest first: deliver, or take back everything from a failure on.
        ``deliver`` written out: every entry's."""
        inflight = self._inflight  # each future asked once per entry: this runs for every entry
        while inflight:
            head = inflight[0]
            done = head.done
            if not done.done():
                return
            try:
                done.result()  # one call for an append that landed (most): ``cancelled``, then ``exception``
            except asyncio.CancelledError:
                self._fail_in_flight(None)
                return
            except BaseException as error:  # the append failed, whatever with: as ``exception()`` gave it
                self._fail_in_flight(error)
                return
            inflight.popleft()
            self.seq, self.durable_data = head.seq, head.data
            for reply, result, refusal in head.answers:  # durable: answered now, in order (R7)
                if not reply.done():  # (a caller that gave up: ``_deliver`` keeps its answer a turn)
                    if refusal is None:
                        reply.set_result(result)
                    else:
                        reply.set_exception(refusal)
                else:
                    self._deliver(reply, result, refusal)
            if self.listeners:  # none without channels: no ``_tell`` frame for nobody
                self._tell(self.listeners, head.entry)

    def _fail_in_flight(self, error: BaseException | None) -> None:
        """An append failed: revert every batch in flight (newest first), answer UNAVAILABLE,
        keep later entries out of the log, and remember those that may have landed to settle."""
        reason = append_failure_reason(error)
        self._metrics.append_failures.labels(reason).inc()
        self._log_failure(reason, error)
        # Fenced: refused before any write, and every later append is refused too (the epoch only
        # grows), so nothing in flight landed and there is nothing to settle.
        replaced = isinstance(error, Fenced)
        failure = self._replaced() if replaced else self._unavailable(error)
        for rec in reversed(self._inflight):
            self.ledger.revert(rec.undo)
            for reply, _, _ in rec.answers:
                self._deliver(reply, None, failure)
        # Refused OOM: the script stopped at its first write, so that entry never landed, nor
        # can it. Only a batch whose call is still on its way may land: settling fences the
        # shard first, which a Redis at its maxmemory refuses too — a shard needlessly in doubt
        # took no work until Redis had room again, and told callers the outcome was unknown.
        certain: list[LogEntry] = []  # never in the log
        for rec in () if replaced else self._inflight:
            if self._cannot_land(rec):
                certain.append(rec.entry)
            else:
                self._doubt.append((rec.seq, rec.entry, rec.data))
        for rec in self._inflight:
            rec.done.cancel()
        undone = [rec.entry for rec in self._inflight]
        self._inflight.clear()
        self._refuse_waiting(failure)
        if self._doubt:
            self.request_maintenance()  # an idle shard settles at once, not at the next message
        for entry in undone:
            self._tell(self.undo_listeners, entry)
        # Lost as surely as an entry in doubt a settle found absent: a Reserve's caller that gave up while
        # it was on its way left its route (the record was in memory then), and no settle comes to drop it.
        for entry in certain:
            self._tell(self.lost_listeners, entry)

    def _log_failure(self, reason: str, error: BaseException | None) -> None:
        """The ``append_failed`` line, at most one per ``APPEND_FAILURE_LOG_EVERY_S`` (each failure
        is counted in ``atp_log_append_failures_total{reason}``)."""
        fields = self._failure_lines.fields(event="append_failed", shard=self.shard, entry=self._inflight[0].seq,
                                            reason=reason, error=str(error))
        if fields is None:
            return
        left_out = fields.get("left_out")
        log.warning("shard %d: append of entry %d failed (%s: %s)%s", self.shard, self._inflight[0].seq, reason,
                    error, f"; {left_out} more failures left out of the log since the last line" if left_out else "",
                    extra=fields)

    def _cannot_land(self, rec: InFlight) -> bool:
        """An entry certainly not in the log, now or later: refused OOM or by the cluster's routing
        (TRYAGAIN, ASK, MOVED, CLUSTERDOWN: answered before the script ran), or not yet sent (cancelled
        below, it never is). A shard's later batches wait in the log's next group commit or share the
        refused call: in doubt, they wedged the shard under load as the refused one did (R7)."""
        done = rec.done
        if done.done():
            if done.cancelled():
                return False
            error = done.exception()
            return out_of_memory(error) or slot_not_served(error) is not None
        return self._log.unsent(done)

    def _unavailable(self, error: BaseException | None) -> Unavailable:
        """The refusal of a failed append: certainly not applied when Redis refused it for memory
        (its operator must give Redis room) or its cluster slot was not served there (a reshard, a
        failover: the caller retries, no settle needed), else not known to be durable (R7)."""
        if out_of_memory(error):
            return refused_for_memory(f"shard {self.shard}")
        if word := slot_not_served(error):  # a reshard or failover of the group's slot (docs/OPERATIONS.md)
            return Unavailable(f"shard {self.shard}: its Redis Cluster slot is moving or failing over ({word}: "
                               f"{error}); nothing was applied; retry later", Reason.STORAGE_UNREACHABLE)
        return Unavailable(
            f"shard {self.shard}: outcome unknown: the change is not known to be durable (log storage "
            "unreachable); retry with the same ids, which answers what was decided", Reason.OUTCOME_UNKNOWN)

    def _replaced(self) -> Unavailable:
        """The refusal once another owns the shard: the keyspace's newer instance, or (leased) the group's new owner."""
        return Moved(self.shard, "") if self._log.leased else replaced(self._log.claim_lost)

    def _refuse_waiting(self, error: Unavailable) -> None:
        """Answer every message waiting for a turn with ``error`` (the actor's mailbox)."""
        raise NotImplementedError

    def request_maintenance(self) -> None:
        """Ask for a maintenance turn (the actor's: it settles what is in doubt)."""
        raise NotImplementedError
