"""``--forward-streams``: a ReserveStream reaching one process, its items of groups other processes own decided by
their owners, through the service's own ``edge/streams.py`` (``SentInTurn``, ``OwnerStreams``, ``OwnerStream``)
over simulated outbound calls (``streamcall.py``: the owner's servicer behind each, and a network's faults).

The stream carries the call's reservations in 1 to 3 batches, each decided as ``servicer._reserve_batch`` does
(``Engine.reserve_many``: its ids claimed, its shards asked; in that turn the items refused ``Moved`` naming an
owner are sent on, one part per owner and batch, on one outbound stream per owner for the whole inbound stream;
those refused so only after the turn, an order's, once the batch is decided) and answered in order. As the
servicer: the batches are tasks of the process, not of the call (R8: a caller that gives up cuts the wait, never
the decision: a retry with the same ids replays them); the outbound streams are half-closed once every batch is
answered, and closed however the stream ends (a batch still being decided then has its parts answered
``OUTCOME_UNKNOWN``). A batch refused whole ends the stream with its status: the items not answered by then get it.

What is not modelled: ``max_stream_inflight`` and ``max_reserve_streams``, the answers' size, ``stream_stall_s``,
and the deadlines (``PEER_CALL_MAX_S``: a part whose owner is paused is late instead, ``streamcall.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.rpc import error_details_pb2

from atp_client import FORWARDED_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.owner_watch import OwnerWatch
from atp_service.edge.streams import OwnerStreams, SentInTurn
from reservation import DomainError, Moved, Reason, ReserveCommand, State, Unavailable
from tests.sim.streamcall import SimStreamCall

if TYPE_CHECKING:
    from tests.sim.edge import Edge
    from tests.sim.process import Process

Decision = tuple[int, int, tuple[tuple[str, str, int, int, tuple[tuple[str, int], ...]], ...]]
"""What a Reserve's answer says was decided (R5: a replay answers the same): its state, when its hold expires
(ms), and per line (sku, location, requested, granted, allocations)."""


@dataclass(frozen=True)
class Forwarded:
    """An item its owner answered: the answer as it came."""

    reservation_id: str
    state: State
    decision: Decision


class OwnerRefusal(DomainError):
    """An item's refusal as its owner (or the outbound stream's end) answered it."""


def decision_of(response: pb.ReserveResponse) -> Decision:
    lines = tuple((line.sku, line.location, line.requested, line.granted,
                   tuple((a.location, a.quantity) for a in line.allocations)) for line in response.lines)
    expires = response.expire_time.seconds * 1000 + response.expire_time.nanos // 1_000_000
    return int(response.state), expires, lines


def decided_of(result: Any) -> Decision:
    """The decision a Reserve's (record, replayed) answers, as its gRPC answer says it."""
    out = pb.ReserveResponse()
    convert.fill_reserve_response(out, *result)
    return decision_of(out)


def result_of(outcome: pb.ReserveOutcome) -> Forwarded | DomainError:
    if outcome.HasField("response"):
        response = outcome.response
        return Forwarded(response.reservation_id, State(response.state), decision_of(response))
    reason = Reason.OUTCOME_UNKNOWN  # gRPC's own end of the outbound stream, no details: in doubt
    for detail in outcome.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = Reason[info.reason]
    return OwnerRefusal(outcome.error.message, reason)


def request_of(cmd: ReserveCommand) -> pb.ReserveRequest:
    req = pb.ReserveRequest(reservation_id=cmd.reservation_id, order_ref=cmd.order_ref, channel=cmd.channel,
                            allow_partial=cmd.allow_partial,
                            lines=[pb.Line(sku=line.sku, location=line.location, quantity=line.quantity)
                                   for line in cmd.lines])
    req.ttl.seconds = cmd.ttl_ms // 1000
    return req


class SimContext:
    """The inbound call's context as ``OwnerStreams`` reads it: the caller's metadata (forwarded: never again)."""

    def __init__(self, forwarded: bool = False) -> None:
        self.metadata = ((FORWARDED_KEY, "sim"),) if forwarded else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None


class SimForwarder:
    """``Forwarder`` as ``OwnerStreams`` uses it: at ``proc``, its outbound streams simulated calls."""

    def __init__(self, edge: Edge, proc: Process, rng: random.Random) -> None:
        self.edge, self.proc, self.rng = edge, proc, rng
        self.address = proc.address
        self.streams: set[asyncio.Task[None]] = set()
        self.owners = OwnerWatch()  # told of no routes read: a part ends by its owner's answer, or its bound

    def forwards(self, moved: Moved, metadata: Sequence[tuple[str, Any]]) -> bool:
        return bool(moved.owner) and moved.owner != self.address and not any(k == FORWARDED_KEY for k, _ in metadata)

    def open_stream(self, address: str, context: Any) -> Any:
        self.edge.world.log.tally.stream_parts += 1
        return SimStreamCall(self.edge.world, self.proc, address, self.rng)

    def counted(self, method: str, outcome: str, n: int = 1) -> None:
        self.edge.world.log.tally.forwarded += n * (outcome != "redirected")


class InboundStream:
    """One ReserveStream reaching ``proc``: ``cmds`` in batches of their order (``rng``: how many)."""

    def __init__(self, edge: Edge, proc: Process, cmds: Sequence[ReserveCommand], rng: random.Random) -> None:
        self.edge, self.proc, self.cmds = edge, proc, list(cmds)
        cuts = sorted(rng.sample(range(1, len(cmds)), rng.randint(0, min(2, len(cmds) - 1))))
        bounds = [0, *cuts, len(cmds)]
        self.batches = [self.cmds[a:b] for a, b in itertools.pairwise(bounds)]
        self.owners = OwnerStreams(SimForwarder(edge, proc, rng), SimContext())  # type: ignore[arg-type]

    async def run(self) -> list[Any]:
        """``servicer.ReserveStream``: each batch's items in order; those after a batch refused whole, its refusal."""
        out: list[Any] = []
        tasks = [asyncio.ensure_future(self._batch(batch)) for batch in self.batches]  # the process's, not the call's
        for task in tasks:
            task.add_done_callback(_seen)
        try:
            for task in tasks:
                try:
                    out.extend(await asyncio.shield(task))
                except DomainError as exc:  # the stream ends with its status
                    out.extend([exc] * (len(self.cmds) - len(out)))
                    return out
            await self.owners.finish()
        finally:
            await self.owners.aclose()
        return out

    async def _batch(self, cmds: list[ReserveCommand]) -> list[Any]:
        """``servicer._reserve_batch``: its items of other processes' groups, their owners' answers."""
        batch = pb.ReserveStreamRequest(reservations=[request_of(cmd) for cmd in cmds])
        sent = SentInTurn(list(range(len(cmds))), batch, self.owners)
        out: list[Any] = list(await self.proc.engine.reserve_many(cmds, sent.now))
        late = {n: result for n, result in enumerate(out) if isinstance(result, Moved) and n not in sent.items}
        tally = self.edge.world.log.tally
        for n, outcome in (await sent.answers(late)).items():
            out[n] = result_of(outcome)
            tally.stream_items += isinstance(out[n], Forwarded)
            tally.stream_doubts += in_doubt(out[n])
        for n, result in enumerate(out):
            if isinstance(result, Moved):
                raise AssertionError(f"sim: item {n} of a batch left Moved: {result}")
        return out


def in_doubt(result: Any) -> bool:
    return isinstance(result, DomainError) and result.reason == Reason.OUTCOME_UNKNOWN


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = ["Forwarded", "InboundStream", "OwnerRefusal", "Unavailable", "decided_of", "in_doubt", "result_of"]
