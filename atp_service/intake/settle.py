"""The settling of a read's entries: acknowledged once their facts are durable, dead-lettered where refused.

The reader's (``ingest.StreamIngestor``) last step for each batch: entries whose facts are durable are acknowledged,
refused ones dead-lettered with their acknowledgement in one script (``dead_letters.write``), the others left pending
and told to the reader (``left_pending``), which reads its own pending list again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from atp_service.config import IngestSettings
from atp_service.intake.dead_letters import DeadLetterLines, Kept
from atp_service.intake.dead_letters import write as write_dead_letters
from atp_service.intake.entries import Dead, Read
from atp_service.intake.facts import Result
from atp_service.intake.fence import Fence, fence_key
from atp_service.intake.refusals import RefusalBound, sort_results
from atp_service.intake.unacked import Unacked
from atp_service.metrics import IntakeMetrics
from atp_service.tasks import exception_seen, finish_uncancelled
from reservation import DomainError


class Settler:
    """Acknowledges and dead-letters a reader's entries. ``left_pending``: called where some stay pending, to be read
    again from the reader's own pending list."""

    def __init__(self, client: Any, settings: IngestSettings, metrics: IntakeMetrics, unacked: Unacked,
                 bound: RefusalBound, left_pending: Callable[[], None]) -> None:
        self._client, self._config, self._metrics = client, settings, metrics
        self._unacked, self._bound, self._left_pending = unacked, bound, left_pending
        self._dead_lines = DeadLetterLines()
        group, consumer = settings.consumer_group, settings.consumer_name
        self.fence = Fence(client, fence_key(settings.input_streams[0], group, consumer), group, consumer)

    async def settle(self, read: list[Read], results: list[Result | DomainError], dead: list[Dead]) -> int:
        """Acknowledge the entries whose facts are durable, dead-letter the refused ones (and ``dead``); others wait."""
        done, judged, left, refused = sort_results(read, results, dead)
        if left:
            self._left_pending()  # they stay pending; read again from our own list
            self._unacked.left(left)
        given_up = await self._bound.past(refused) if refused else []  # read for ever otherwise, never applied
        if dead or given_up:
            # Remembered once dead-lettered (else each stays pending): a group made again delivers them again.
            written = await self.dead_letter(dead + given_up, {*judged, *(one[:2] for one in given_up)})
            self._bound.told([one for one in given_up if one[:2] in written], refused)  # not those gone elsewhere
        await self.ack(done)
        return len(done) + len(dead) + len(given_up)

    async def dead_letter(self, dead: list[Dead], clock: Collection[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
        """The entries' dead letters written, then the entries acknowledged (``dead_letters.write``): both, even if a
        stop cancels the reader meanwhile; one read trimmed that Redis, back from older data, holds is left pending.
        One refused already (``Unacked.judged``) is not written again while the dead-letter stream holds its letter.
        Those refused by a judgement (``clock``: E7) or already are remembered, with their letters' ids (Redis too).
        One pending to this consumer no more (delivered again elsewhere: its group made again meanwhile, or claimed) is
        left to the reader that holds it now, neither written nor acknowledged here (``dead_letters.write``).
        Returns the entries acknowledged with their letters: one given up (``RefusalBound``) and gone elsewhere is its
        holder's to count, not this reader's. Its answer lost, the write is in doubt: fenced before its entries are
        judged again (``fence.py``); refused by the fence, its entries are left pending."""
        cfg, before = self._config, self._unacked.letters(dead)
        keep = Kept({one[:2] for one in dead if one[:2] in clock or one[:2] in before}, cfg.ingest_refused_kept)
        token = await self.fence.raised()
        told = asyncio.ensure_future(write_dead_letters(self._client, dead, cfg.dead_letter_stream,
                                                        cfg.side_stream_maxlen, cfg.consumer_group,
                                                        cfg.ingest_max_entry_bytes, before, keep,
                                                        consumer=cfg.consumer_name, fence=(self.fence.key, token)))
        told.add_done_callback(exception_seen)  # a stop that gave up waiting: no "never retrieved" line
        try:
            kept, letters, forgotten, elsewhere, fenced = await finish_uncancelled(told)
        except BaseException:
            self.fence.doubt(one[:2] for one in dead)
            raise
        if fenced:
            self.fence.refused(token)
        for stream, count in forgotten.items():  # kept in Redis as refused no more: judged again if read again
            self._metrics.ingest_refused_forgotten.labels(stream).inc(count)
        if kept or elsewhere:
            self._left_pending()  # read again from our own list (a pass lets the bound of those elsewhere go), and
        self._unacked.left([*kept, *elsewhere])  # known held here (``Unacked``): a group made again starts before them
        self._unacked.refused((one, letters[one[:2]]) for one in dead if one[:2] in letters and one[:2] in keep.entries)
        self.told([one for one in dead if one[:2] in letters and letters[one[:2]] != before.get(one[:2])])
        return set(letters)

    def told(self, dead: list[Dead]) -> None:
        """Dead letters written: counted and logged."""
        for stream, entry_id, _, why in dead:
            self._metrics.dead_lettered.labels(stream).inc()
            self._dead_lines.tell(stream, entry_id, why)

    async def ack(self, done: list[tuple[str, bytes]]) -> None:
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id in done:
            by_stream.setdefault(stream, []).append(entry_id)
        if by_stream:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, self._config.consumer_group, *ids)
                await pipe.execute()
