"""Input entries whose facts are refused for a reason that does not pass with time: dead-lettered at a bound.

An entry whose fact cannot be applied yet stays pending and is read again (``StreamIngestor``). That is
right while the refusal is one of ``TRANSIENT`` — the service's own availability: a shard recovering or
stopped, a group between owners, Redis not answering, a write in doubt, a queue full — which passes
however long it lasts, and such an entry is never dead-lettered. Any other refusal (``INTERNAL``: a bug)
comes back at every delivery: read again every second for ever, its fact never applied and nothing told. So an
entry refused so is dead-lettered (``REFUSED_REPEATEDLY``, the refusal's reason and message in
``_reason``) and acknowledged once Redis has delivered it ``ingest_max_deliveries`` times (its pending
entry's delivery count, which survives restarts) and this reader saw it refused so before (a refusal of
one delivery only, a race, dead-letters nothing). Its dead letter and its acknowledgement are one script
(``dead_letters.write``): exactly once, also across a crash.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from atp_service.engine.parts import PASSING, lasting
from atp_service.instruments import Counter
from atp_service.intake.dead_letters import REFUSED_REPEATEDLY, Why, why_refused
from atp_service.intake.entries import Dead, Read
from atp_service.intake.facts import Result
from reservation import DomainError, InvalidArgument

TRANSIENT = PASSING
"""The refusals of a fact that pass with time, whatever the fact (``engine.parts.PASSING``: ``OUTCOME_UNKNOWN``,
``STORAGE_UNREACHABLE``, ``CONCURRENT_CHANGE``, ``RECOVERING``, ``SHUTTING_DOWN``, ``SHARD_STOPPED``,
``INSTANCE_REPLACED``, ``GROUP_MOVED``, ``SHARD_OVERLOADED``, ``SERVICE_OVERLOADED``, ``CAPACITY_REACHED``): its
entry stays pending and is read again for as long as they last, never dead-lettered. Closed (docs/OPERATIONS.md
"Input streams"): any other reason refuses the fact itself, at every delivery. ``CAPACITY_REACHED`` frees as
reservations end — except an order given up for it (``given_up``), which answers the same for good."""

SEEN_KEPT = 10_000
"""Entries this reader remembers having seen refused for a reason not transient; past it the one seen
longest ago is forgotten (its next refusal counts as a first: one delivery more before its dead letter)."""


def transient(error: DomainError) -> bool:
    """Whether ``error`` passes with time (``TRANSIENT``): the entry is read again, never dead-lettered."""
    return not lasting(error)


def sort_results(read: Sequence[Read], results: Sequence[Result | DomainError], dead: list[Dead]
                 ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[tuple[str, bytes]],
                            list[tuple[Read, DomainError]]]:
    """What becomes of each entry by its fact's result: those to acknowledge (durable), those refused by a
    judgement (its clock, E7: added to ``dead``, not to be judged again), those left pending, and of these
    the ones refused for a reason not ``transient`` (with their refusal), for ``RefusalBound.past``."""
    done, judged, left = [], [], []
    refused: list[tuple[Read, DomainError]] = []
    for (stream, entry_id, fields), result in zip(read, results, strict=True):
        if isinstance(result, InvalidArgument):  # the owner's own check (its clock, E7)
            dead.append((stream, entry_id, fields, why_refused(result)))
            judged.append((stream, entry_id))
        elif isinstance(result, DomainError):
            left.append((stream, entry_id))
            if not transient(result):
                refused.append(((stream, entry_id, fields), result))
        else:
            done.append((stream, entry_id))
    return done, judged, left, refused


class RefusalBound:
    """Which entries refused for a reason not transient are dead-lettered now (``past``)."""

    def __init__(self, client: Any, group: str, consumer: str, max_deliveries: int, given_up: Counter) -> None:
        self._client, self._group, self._consumer = client, group, consumer
        self._max = max_deliveries
        self._given_up = given_up
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    async def past(self, refused: Sequence[tuple[Read, DomainError]]) -> list[Dead]:
        """The entries of ``refused`` to dead-letter now: seen refused so before by this reader, and delivered
        ``max_deliveries`` times or more to it (XPENDING); the others stay pending. ``max_deliveries`` 0: none."""
        again = [(read, error) for read, error in refused if self._seen_before(read[0], read[1])]
        if not again or self._max <= 0:
            return []
        counts = await self._deliveries([read for read, _ in again])
        return [(stream, entry_id, fields, self._why(error, n))
                for ((stream, entry_id, fields), error), n in zip(again, counts, strict=True) if n >= self._max]

    def told(self, dead: Sequence[Dead], refused: Sequence[tuple[Read, DomainError]]) -> None:
        """The dead letters of ``past`` written: counted by stream and refusal (``atp_ingest_given_up_total``)."""
        reasons = {(read[0], read[1]): error.reason.name for read, error in refused}
        for stream, entry_id, _, _ in dead:
            self._seen.pop((stream, entry_id), None)
            self._given_up.labels(stream, reasons[(stream, entry_id)]).inc()

    def _seen_before(self, stream: str, entry_id: bytes) -> bool:
        key = (stream, entry_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        return False

    async def _deliveries(self, reads: list[Read]) -> list[int]:
        """How many times Redis delivered each entry to this consumer; 0 where it is not pending to it (taken
        over by another consumer, acknowledged, its group made again): not this reader's to dead-letter."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, entry_id, _ in reads:
                pipe.xpending_range(stream, self._group, entry_id, entry_id, 1, self._consumer)
            replies = await pipe.execute()
        return [int(reply[0]["times_delivered"]) if reply else 0 for reply in replies]

    def _why(self, error: DomainError, deliveries: int) -> Why:
        return Why(f"refused {error.reason.name}, a reason that does not pass with time, at delivery {deliveries} "
                   f"(limit ingest_max_deliveries={self._max}): {error.message}", "", REFUSED_REPEATEDLY)
