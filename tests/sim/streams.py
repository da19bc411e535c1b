"""``--forward-streams``: a ReserveStream batch at one process, its items of groups other processes own sent to
those owners in the batch's turn, as the service's edge does (``edge/servicer.py`` ``_reserve_batch``,
``edge/streams.py`` ``SentInTurn``, ``OwnerStreams``) — not answered ``Moved`` to the caller.

The batch is decided by the process the call reached (``Engine.reserve_many``: its ids claimed, its shards
asked); in that turn (``asked``) the items refused ``Moved`` naming an owner are sent on, one part per owner,
each decided there as a batch of its own (a forwarded stream is never forwarded again: the owner's ``Moved`` is
the item's answer); those refused so only after the turn (an order's) are sent on once the batch is decided.
A part whose owner does not answer (dead, paused past the call, its door shedding load) answers each of its
items with that refusal — as an outbound stream that failed answers its parts ``OUTCOME_UNKNOWN``, or the
owner's refusal at its start. What is not modelled: one outbound stream per owner for a whole inbound stream of
several batches (each batch here is one stream of its own), and the bounds on how many are open."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reservation import DomainError, Moved, ReserveCommand

if TYPE_CHECKING:
    from tests.sim.edge import Edge
    from tests.sim.process import Process


class StreamBatch:
    """One ReserveStream batch reaching ``proc`` (``SentInTurn`` with the servicer's batch around it)."""

    def __init__(self, edge: Edge, proc: Process, cmds: Sequence[ReserveCommand]) -> None:
        self.edge, self.proc, self.cmds = edge, proc, cmds
        self.sent: set[int] = set()
        self._asked: list[asyncio.Future[dict[int, Any]]] = []

    async def decide(self) -> list[Any]:
        out: list[Any] = list(await self.proc.engine.reserve_many(self.cmds, self.now))
        late = {i: result for i, result in enumerate(out) if isinstance(result, Moved) and i not in self.sent}
        if late:  # refused so after the batch's turn (an order's): sent on now
            self._asked.append(asyncio.ensure_future(self._owners(late)))
        for found in await asyncio.gather(*self._asked):
            for i, result in found.items():
                out[i] = result
        return out

    def now(self, out: list[Any]) -> None:
        """In the batch's turn: its items refused ``Moved`` sent to their owners, before any later batch's."""
        moved = {i: result for i, result in enumerate(out) if isinstance(result, Moved)}
        if moved:
            self.sent.update(moved)
            self._asked.append(asyncio.ensure_future(self._owners(moved)))  # the process's: a kill ends it

    async def _owners(self, moved: dict[int, Moved]) -> dict[int, Any]:
        """``OwnerStreams.answer``: each item its owner's outcome; one naming no other owner, its ``Moved``."""
        parts: dict[str, list[int]] = {}
        out: dict[int, Any] = {}
        for i, refusal in moved.items():
            if refusal.owner and refusal.owner != self.proc.address:
                parts.setdefault(refusal.owner, []).append(i)
            else:
                out[i] = refusal  # the caller is redirected (no owner known: retry)
        owners = list(parts)
        answers = await asyncio.gather(*(self._part(owner, parts[owner]) for owner in owners))
        for owner, answer in zip(owners, answers, strict=True):
            out.update(zip(parts[owner], answer, strict=True))
        return out

    async def _part(self, owner: str, idx: list[int]) -> list[Any]:
        """The owner's outcomes of ``idx``, decided there as one batch; its refusal for each where it gave none."""
        tally = self.edge.world.log.tally
        tally.forwarded += 1
        tally.stream_parts += 1
        part = [self.cmds[i] for i in idx]
        try:
            return list(await self.edge._at(owner, lambda p: p.engine.reserve_many(part)))
        except DomainError as exc:  # not answered: nothing known of the part's items but this
            return [exc] * len(idx)
