"""A change over several shards, all or nothing (R2), whatever happens to its caller (R8).

The coordinator pauses the shards involved in ascending order (two coordinators can never wait on
each other), decides over all of them at once through a ``CompositeView``, seals each shard's part
into that shard's own pipeline as one group of the group commit (it lands whole or not at all),
resumes them, and only then waits for the group to be durable. There is no ``await`` between the
decision and the seal, so no other task sees the shards in between; once sealed, the parts are the
shards' own batches in flight — durable, or undone and settled by the shards like any other batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from atp_service.engine.clock import Clock
from atp_service.engine.composite import CompositeView
from atp_service.engine.messages import refused_for_memory, replaced
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.resp import out_of_memory
from reservation import DomainError, Reason, ReserveView, Unavailable

log = logging.getLogger(__name__)

ViewWork = Callable[[ReserveView, int], Any]
NOT_DURABLE = ("outcome unknown: the change is not known to be durable (log storage unreachable); retry with "
               "the same ids, which answers what was decided")


def _not_together(shards: list[int]) -> DomainError:
    """The refusal, nothing decided, of a change across ``shards`` where Redis cannot land it all or none
    (a cluster, leased groups): only a plain reservation the single writer decided across shards, before
    its keyspace moved to leases, comes here (since then such orders are sagas). Refused here, not after
    sealing: the group commit's refusal then (``CrossGroupWrite``) was taken for a bug half-way and
    stopped every shard of it, their groups given up and taken again at every housekeeping pass."""
    return DomainError(f"a reservation across shards {shards} made before the keyspace moved to ownership=leases "
                       "cannot be changed by leased processes (docs/OPERATIONS.md); nothing was applied",
                       Reason.INTERNAL)


def _answer_once(durable: asyncio.Future[None], result: Any, error: DomainError | None) -> asyncio.Future[Any]:
    """The answer of a change sealed, once ``durable`` has ended: ``result`` (or ``error``, decided) once durable, else
    in doubt (R7) as ``Coordinator._durable`` tells it, for a caller gone meanwhile (R8: the shards see it through)."""
    answer: asyncio.Future[Any] = durable.get_loop().create_future()

    def told(done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is None:
            answer.set_exception(error) if error is not None else answer.set_result(result)
        else:
            answer.set_exception(Unavailable(NOT_DURABLE, Reason.OUTCOME_UNKNOWN))

    durable.add_done_callback(told)
    return answer


class Coordinator:
    def __init__(self, actors: Sequence[ShardActor], log_store: LogStore, clock: Clock,
                 place: Callable[[str], int], metrics: EngineMetrics) -> None:
        self._actors, self._log, self._clock, self._place = actors, log_store, clock, place
        self._metrics = metrics

    @property
    def together(self) -> bool:
        """Whether a change across shards can be run at all (the log lands it all or none)."""
        return self._log.together

    async def run(self, shards: list[int], home: int, work: ViewWork,
                  late: Callable[[asyncio.Future[Any]], None] | None = None) -> Any:
        """``work`` over ``shards`` (ascending), the record's home being ``home``. Cancelled at any
        await, it leaves no shard paused (``ShardActor.pause``) and changes nothing it has not sealed;
        cancelled once sealed, ``late`` is given the answer its caller would have had (``_answer_once``)."""
        if len(shards) > 1 and not self.together:
            raise _not_together(shards)
        resumes: list[asyncio.Future[None]] = []
        try:
            for shard in shards:
                resumes.append(await self._actors[shard].pause())
            result, error, durable = self._decide_and_seal(shards, home, work)
        finally:
            for resume in resumes:
                if not resume.done():
                    resume.set_result(None)
        if durable is not None:
            try:
                await self._durable(durable)
            except asyncio.CancelledError:
                if late is not None:
                    late(_answer_once(durable, result, error))
                raise
        if error is not None:
            raise error
        return result

    @staticmethod
    async def _durable(durable: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(durable)  # the caller's cancellation abandons the wait, not the work
        except asyncio.CancelledError:
            if not durable.cancelled():
                raise  # our caller gave up; the shards see the change through
            raise Unavailable(NOT_DURABLE, Reason.OUTCOME_UNKNOWN) from None
        except Fenced as exc:
            raise replaced(exc.claim_lost) from None
        except STORAGE_ERRORS as exc:
            # Each part's shard logs the failure (``append_failed``, rate-limited); a WARNING per call
            # here, unlimited, flooded the log while a full Redis refused every write.
            log.debug("cross-shard append failed (%r)", exc)
            if out_of_memory(exc):  # the script stopped at its first write: nothing landed
                raise refused_for_memory("a change across shards") from None
            raise Unavailable(NOT_DURABLE, Reason.OUTCOME_UNKNOWN) from None

    def _decide_and_seal(self, shards: list[int], home: int, work: ViewWork
                         ) -> tuple[Any, DomainError | None, asyncio.Future[None] | None]:
        actors = {s: self._actors[s] for s in shards}
        now = self._clock.now_ms()
        view = CompositeView({s: a.ledger for s, a in actors.items()}, home, self._place)
        error: DomainError | None = None
        result: Any = None
        try:
            result = work(view, now)
        except DomainError as exc:
            error = exc
        except Exception as exc:  # a bug: the paused shards' open batches hold only this change
            for actor in actors.values():
                actor.ledger.rollback()
            log.exception("a cross-shard command failed unexpectedly; nothing of it was applied")
            self._metrics.internal_errors.inc()
            raise DomainError(f"internal error ({type(exc).__name__}); nothing was applied") from None
        try:
            parts = {s: part for s, a in actors.items() if (part := a.seal_part(now)) is not None}
            if not parts:
                return result, error, None
            durable = self._log.submit_group([(s, part.seq, part.data) for s, part in parts.items()])
            for s, part in parts.items():
                actors[s].track_part(part, durable)
        except Exception as exc:  # a bug half-way through sealing: memory can no longer be trusted
            for actor in actors.values():
                actor.break_down(exc)
            raise DomainError(f"internal error ({type(exc).__name__}); the service restarts") from None
        return result, error, durable
