"""An outbound ``ReserveStream`` between two simulated processes: what ``edge/streams.py OwnerStream`` reads and
writes as its ``grpc.aio`` call (``initial_metadata``, ``write``, ``done_writing``, ``cancel``, the responses, the
status), with the owner's servicer behind it and the faults of a network between them.

The owner accepts the stream (its headers) once it runs (a paused one once it runs again); a dead one never: the
call ends ``UNAVAILABLE`` before its headers ("failed to connect"). Each part written is decided there as a batch of
its own, in a task of the owner's that the call does not own (R8: a caller gone cuts the wait, not the decision;
a kill of the owner ends it), and answered in the order written. A part may be lost with the connection (the call
ends ``UNAVAILABLE``, the owner never read it), be late (the sender's deadline passes first: the call ends
``DEADLINE_EXCEEDED`` now, and the owner decides the part some turns later, its answer read by nobody: a paused
owner's parts always are), or its answer be lost (decided there, the call ends ``UNAVAILABLE``). A batch the owner
refuses whole ends the stream with its status (``servicer._end_stream``), after the answers before it.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from atp_client import ACCEPTED_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.errors import DETAILS_KEY, rich_status, status_of
from reservation import DomainError, Moved

if TYPE_CHECKING:
    from tests.sim.cluster import ClusterWorld
    from tests.sim.process import Process

FATES = ("ok",) * 12 + ("lost_request", "late", "lost_reply")
CUT_FATES = {"unsent": "lost_request", "in_hand": "late", "late": "late"}
"""A part across a partition (``partition.py``): never sent, or served with the call cut before its answer came."""
End = tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]


class SimStreamCall:
    def __init__(self, world: ClusterWorld, source: Process, address: str, rng: random.Random) -> None:
        self.world, self.source, self.address, self.rng = world, source, address, rng
        loop = asyncio.get_running_loop()
        self._headers: asyncio.Future[tuple[tuple[str, str], ...]] = loop.create_future()
        self._ended: asyncio.Future[End] = loop.create_future()
        self._responses: deque[pb.ReserveStreamResponse] = deque()
        self._arrived = asyncio.Event()
        self._requests: asyncio.Queue[pb.ReserveStreamRequest | None] = asyncio.Queue()
        self._cancelled = False
        self._serving: list[asyncio.Task[Any]] = []
        self._done_callbacks: list[Any] = []
        target = world.at(address)
        if target is None or target.dead:
            self._end(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
            return
        self.target = target
        serve = target.spawn(self._serve(target))
        serve.add_done_callback(lambda _t: self._end(grpc.StatusCode.UNAVAILABLE, "the owner's connection was lost"))
        self._serving.append(serve)

    # -- the grpc.aio call, as OwnerStream uses it ----------------------------------------------------
    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        waits: list[asyncio.Future[Any]] = [self._headers, self._ended]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return self._headers.result() if self._headers.done() else ()

    async def code(self) -> grpc.StatusCode:
        return (await self._ended)[0]

    async def details(self) -> str:
        return (await self._ended)[1]

    async def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return (await self._ended)[2]

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._ended.done()

    def add_done_callback(self, callback: Any) -> None:
        self._done_callbacks.append(callback)

    def cancel(self) -> bool:
        if self._ended.done():
            return False
        self._cancelled = True
        self._end(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return True

    async def write(self, part: pb.ReserveStreamRequest) -> None:
        await self._wire()
        if self._ended.done():
            raise self._error()
        fate = self.rng.choice(FATES)
        if (cut := self.world.cut(self.source.address, self.address)) is not None:
            fate = CUT_FATES[cut]  # ``--partition``: the two cannot reach each other now
        tally = self.world.log.tally
        tally.stream_faults += fate != "ok" or self.target.frozen
        if fate == "lost_request":
            self._end(grpc.StatusCode.UNAVAILABLE, "sim: the connection to the owner was reset")
        elif fate == "late" or self.target.frozen:
            self.target.background(self._late(self.target, part))
            self._end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        else:
            self._requests.put_nowait(part)

    async def done_writing(self) -> None:
        if self._ended.done():
            raise self._error()
        self._requests.put_nowait(None)

    def __aiter__(self) -> SimStreamCall:
        return self

    async def __anext__(self) -> pb.ReserveStreamResponse:
        while not self._responses:
            if self._ended.done():
                code = self._ended.result()[0]
                if code == grpc.StatusCode.OK:
                    raise StopAsyncIteration
                if self._cancelled:
                    raise asyncio.CancelledError
                raise self._error()
            self._arrived.clear()
            await self._arrived.wait()  # set by each answer, and by the call's end
        return self._responses.popleft()

    # -- the owner's side ---------------------------------------------------------------------------
    async def _serve(self, target: Process) -> None:
        await self._wire()
        try:
            await target.log.awake()  # a paused owner accepts once it runs again; a dead one: the call ends
        except ConnectionError:
            return
        self._headers.set_result(((ACCEPTED_KEY, "1"),))
        answering: asyncio.Queue[asyncio.Task[pb.ReserveStreamResponse] | None] = asyncio.Queue()
        self._serving.append(target.spawn(self._answer(target, answering)))
        while (part := await self._requests.get()) is not None:
            batch = target.spawn(owner_decides(target, part))  # the owner's: not ended with the call (R8)
            batch.add_done_callback(_seen)
            answering.put_nowait(batch)
        answering.put_nowait(None)
        await asyncio.Event().wait()  # the answers end the call; a kill of the owner, or a cancel, ends this

    async def _answer(self, target: Process, answering: asyncio.Queue[asyncio.Task[pb.ReserveStreamResponse] | None],
                      ) -> None:
        while (batch := await answering.get()) is not None:
            try:
                response = await asyncio.shield(batch)
            except DomainError as exc:  # the batch refused whole: the stream ends with its status
                self._end(status_of(exc), exc.message, ((DETAILS_KEY, rich_status(exc).SerializeToString()),))
                return
            await self._wire()
            if self._ended.done():
                return
            if self.rng.choice(FATES) == "lost_reply":
                self.world.log.tally.stream_faults += 1
                self._end(grpc.StatusCode.UNAVAILABLE, "sim: the connection to the owner was reset")
                return
            self._responses.append(response)
            self._arrived.set()
        self._end(grpc.StatusCode.OK, "")

    async def _late(self, target: Process, part: pb.ReserveStreamRequest) -> None:
        for _ in range(self.rng.randint(1, 60)):
            await asyncio.sleep(0)
        await target.log.awake()
        await owner_decides(target, part)

    # -- the wire -----------------------------------------------------------------------------------
    async def _wire(self) -> None:
        for _ in range(1 + self.rng.randrange(3)):
            await asyncio.sleep(0)

    def _end(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...] = ()) -> None:
        if self._ended.done():
            return
        self._ended.set_result((code, details, trailers))
        self._arrived.set()
        for task in self._serving:
            if task is not asyncio.current_task():
                task.cancel()
        for callback in self._done_callbacks:
            callback(self)

    def _error(self) -> grpc.aio.AioRpcError:
        code, details, trailers = self._ended.result()
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details, None)


async def owner_decides(target: Process, part: pb.ReserveStreamRequest) -> pb.ReserveStreamResponse:
    """The owner's ``servicer._reserve_batch`` for a forwarded stream: never sent on again (an item of a group it
    does not own is answered ``GROUP_MOVED``, naming its owner)."""
    limits = target.engine.limits
    cmds, failed = [], {}
    for n, req in enumerate(part.reservations):
        try:
            cmds.append(convert.reserve_cmd(req, limits))
        except DomainError as exc:
            failed[n] = pb.ReserveOutcome(reservation_id=req.reservation_id, error=rich_status(exc))
    decided = iter(await target.engine.reserve_many(cmds))
    answer = pb.ReserveStreamResponse()
    for n, req in enumerate(part.reservations):
        if n in failed:
            answer.outcomes.add().CopyFrom(failed[n])
            continue
        result = next(decided)
        outcome = answer.outcomes.add(reservation_id=req.reservation_id)
        if isinstance(result, (DomainError, Moved)):
            outcome.error.CopyFrom(rich_status(result))
        else:
            convert.fill_reserve_response(outcome.response, *result)
    return answer


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
