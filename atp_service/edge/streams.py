"""``ReserveStream`` split by owner: the items of a batch whose groups other processes own are
decided by those owners, over one outbound ``ReserveStream`` per owner for the whole inbound stream.

A stream answers its requests in order, so each outbound stream keeps the batches' parts it has
written in that order and hands each response to the part it answers. What is in flight on them
is bounded by the inbound stream's own flow control (``max_stream_inflight`` batches, at most one
part each per owner) and their number by ``MAX_OWNER_STREAMS``. An outbound stream that fails
answers its parts' items ``UNAVAILABLE`` (``OUTCOME_UNKNOWN``: the owner may have decided them, a
retry with the same ids says what it decided) and is opened again for the next batch; one the owner
refused at its start, before anything was written to it, answers them the owner's refusal itself.
Every one of them is closed when the inbound stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any, cast

import grpc
from google.rpc import status_pb2

from atp_client import accepted, release
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import carried_status, rich_status
from atp_service.edge.forward import PEER_CALL_MAX_S, Forwarder, StreamCall
from atp_service.edge.owner_watch import OwnerWatch
from atp_service.tasks import exception_seen
from reservation import DomainError, Moved, Reason, Unavailable

MAX_OWNER_STREAMS = 16
"""Outbound streams one inbound ``ReserveStream`` keeps open at most (one per owner it needs);
items of owners past it are refused ``GROUP_MOVED``, naming their owner."""
CLOSE_GRACE_S = 1.0
"""How long an inbound stream that ended answered waits for its owners to end their streams."""
METHOD = "ReserveStream"


class OwnerRefused(Exception):
    """The owner refused the outbound stream before any part was written to it (at its start:
    ``max_reserve_streams``, a stop under way): nothing sent there was decided, so its items are
    told the owner's own refusal (``status``), not ``OUTCOME_UNKNOWN``."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @classmethod
    async def of(cls, call: StreamCall) -> OwnerRefused:
        """The refusal ``call`` (ended) was answered: the owner's rich status (its reason with it)
        where it sent one, else gRPC's code and message."""
        trailers = cast(Iterable[tuple[str, Any]], await call.trailing_metadata() or ())
        return cls(carried_status(await call.code(), await call.details() or "", trailers))


class OwnerStream:
    """One outbound ``ReserveStream``: parts written in the order their answers are awaited, so the
    n-th response answers the n-th part written; the first only once the owner has accepted the
    stream (its headers), else a refusal at its start would race it and read as in doubt."""

    def __init__(self, call: StreamCall, address: str, owners: OwnerWatch) -> None:
        self.address = address
        self._call = call
        self._owners = owners  # the routes read: a part whose group passed to another owner ends then
        self._waiting: deque[asyncio.Future[pb.ReserveStreamResponse]] = deque()
        self._writing = asyncio.Lock()
        self._accepted = False
        self.failure: DomainError | OwnerRefused | None = None
        """Why the stream ended (set once it has): every part still waiting, or sent later, gets it."""
        self.reader = asyncio.ensure_future(self._read())

    async def ask(self, part: pb.ReserveStreamRequest, groups: Collection[int]) -> pb.ReserveStreamResponse:
        """The owner's answer to ``part`` (of ``groups``), within ``PEER_CALL_MAX_S`` of asking it; raises the
        stream's failure when it ends first — at once once the routes name another owner of one of ``groups``
        (``OwnerWatch``): an owner gone silent with it in hand, its group taken, held it (and every part behind
        it) the whole bound. The stream is broken then: its later answers could not be matched to their parts."""
        with self._owners.lost(groups, self.address) as lost:
            asking = asyncio.ensure_future(self._ask(part))
            asking.add_done_callback(exception_seen)
            try:
                await asyncio.wait((asking, lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not asking.done():  # the group moved, or this batch's caller went away
                    if lost.done():
                        group, now = lost.result()
                        self._break(_unknown(self.address, f"lost shard group {group} with this part in hand (now "
                                                           f"{now or 'being taken over'})"))
                    asking.cancel()
                    await asyncio.wait((asking,))
            if not asking.cancelled():
                return asking.result()
            assert self.failure is not None  # set by _break above
            raise self.failure

    async def _ask(self, part: pb.ReserveStreamRequest) -> pb.ReserveStreamResponse:
        """``ask``, unwatched: the wait for the owner to accept the stream is within the bound too (counted
        apart, a part was held up to twice the bound every forwarded call keeps)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PEER_CALL_MAX_S
        async with self._writing:  # each answer awaited in the order its part is written
            if not self._accepted and self.failure is None:
                await self._accept(deadline)
            if self.failure is not None:
                raise self.failure
            answer: asyncio.Future[pb.ReserveStreamResponse] = loop.create_future()
            answer.add_done_callback(exception_seen)
            self._waiting.append(answer)
            try:
                # Bounded too: a part larger than the owner's flow-control window waits for the owner to
                # read, and an owner paused (its loop stalled, SIGSTOP) would hold it, and every part
                # behind it, for as long as the inbound stream lasts.
                async with asyncio.timeout_at(deadline):
                    await self._call.write(part)
            except TimeoutError:  # perhaps half written: as for an owner that stops answering
                self._break(_unknown(self.address, f"did not take the part within {PEER_CALL_MAX_S:.0f}s"))
                assert self.failure is not None  # set by _break, if not before
                raise self.failure from None
            except BaseException as exc:  # perhaps half written: no later response could be matched to its part
                self._break(_unknown(self.address, f"could not be written to ({type(exc).__name__})"))
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise
        try:
            return await asyncio.wait_for(asyncio.shield(answer), deadline - loop.time())
        except TimeoutError:  # the owner stopped answering: this stream's later answers cannot be matched
            failure = _unknown(self.address, f"did not answer within {PEER_CALL_MAX_S:.0f}s")
            self._break(failure)
            raise failure from None

    async def _accept(self, deadline: float) -> None:
        """Wait for the owner's headers (until ``deadline``, the loop's time). A stream ended by then had
        nothing written to it: its failure is the owner's refusal as it came, certain, not in doubt."""
        try:
            async with asyncio.timeout_at(deadline):
                if await accepted(self._call):
                    self._accepted = True
                    return
                code = await self._call.code()  # refused at its start: the status follows the bare headers
        except TimeoutError:
            self._break(_unknown(self.address, f"did not accept the stream within {PEER_CALL_MAX_S:.0f}s"))
            return  # as for an owner that stops answering (nothing was sent: a retry is told so)
        if not self._call.cancelled() and code != grpc.StatusCode.OK:
            # not CANCELLED: close() ending it here is no refusal of the owner's (the failure it set stands)
            self.failure = await OwnerRefused.of(self._call)  # over the reader's in-doubt one: nothing was written
        else:
            self.failure = self.failure or _unknown(self.address, "ended the stream before accepting it")

    async def _read(self) -> None:
        failure = _unknown(self.address, "ended the stream before answering")
        try:
            async for response in self._call:
                answer = self._waiting.popleft()
                if not answer.done():  # else its batch is no longer waiting for it
                    answer.set_result(response)
        except grpc.aio.AioRpcError as exc:
            failure = _unknown(self.address, f"failed the stream ({exc.code().name}: {exc.details()})")
        except (Exception, asyncio.CancelledError) as exc:  # closed here, or an answer too many
            failure = _unknown(self.address, f"gave an answer that could not be read ({type(exc).__name__})")
        finally:
            self.failure = self.failure or failure
            while self._waiting:
                answer = self._waiting.popleft()
                if not answer.done():
                    answer.set_exception(self.failure)

    async def finish(self) -> None:
        """Half-close: the owner ends the stream once it has answered every part written."""
        async with self._writing:
            if self.failure is None:
                self.failure = _unknown(self.address, "is no longer asked: the stream it was asked for has ended")
                try:
                    await self._call.done_writing()
                except Exception:  # the call has ended already: so has, or will, its reader
                    release(self._call)

    def _break(self, failure: DomainError) -> None:
        """End the call now: parts asked from now on get ``failure`` at once; the reader fails
        those still waiting, and ends. In gRPC's core too (``release``): one grpcio's own ``INTERNAL`` ended on
        this side alone (a write failing) ``call.cancel()`` leaves open there, and on the owner, for the channel's
        life."""
        self.failure = self.failure or failure
        release(self._call)

    def close(self) -> None:
        """End the stream: its inbound stream has ended."""
        self._break(_unknown(self.address, "is no longer asked: the stream it was asked for has ended"))
        self.reader.cancel()


class OwnerStreams:
    """The outbound streams of one inbound ``ReserveStream``: one per owner, opened when a batch
    first needs it, opened again after one failed, all closed by ``aclose``."""

    def __init__(self, forwarder: Forwarder, context: grpc.aio.ServicerContext[Any, Any],
                 limit: int = MAX_OWNER_STREAMS) -> None:
        self._forwarder = forwarder
        self._context = context
        self._metadata = tuple(context.invocation_metadata() or ())
        self._limit = limit
        self._open: dict[str, OwnerStream] = {}
        self._readers: set[asyncio.Task[None]] = set()  # those still running: of open streams, and of replaced ones
        self._closed = False

    async def answer(self, batch: pb.ReserveStreamRequest, moved: dict[int, Moved]) -> dict[int, pb.ReserveOutcome]:
        """The outcome of each item of ``batch`` refused ``moved`` here (by its index): its owner's,
        or the refusal naming the owner where the caller is redirected."""
        parts: dict[OwnerStream, list[int]] = {}
        out: dict[int, pb.ReserveOutcome] = {}
        redirected = False
        for n, refusal in moved.items():
            stream = self._stream(refusal)
            if isinstance(stream, DomainError):
                out[n] = _refused(batch.reservations[n].reservation_id, stream)
                redirected |= isinstance(stream, Moved)
            else:
                parts.setdefault(stream, []).append(n)
        if redirected and not self._closed:
            self._forwarder.counted(METHOD, "redirected")
        asked = await asyncio.gather(*(self._ask(stream, batch, idx, {moved[n].group for n in idx})
                                       for stream, idx in parts.items()))
        for found in asked:
            out.update(found)
        return out

    def _stream(self, moved: Moved) -> OwnerStream | DomainError:
        """The open stream to ``moved``'s owner (opened now if need be); else the item's refusal: ``moved`` (the
        caller redirected), or why no stream could be opened (``Forwarder.using``: nothing sent)."""
        if self._closed or not self._forwarder.forwards(moved, self._metadata):
            return moved
        stream = self._open.get(moved.owner)
        if stream is not None and stream.failure is None:
            return stream
        if stream is None and len(self._open) >= self._limit:
            return moved
        try:
            call = self._forwarder.open_stream(moved.owner, self._context)
        except DomainError as exc:  # no channel to the owner now (the stop, MAX_PEER_CHANNELS): nothing sent
            return exc
        stream = self._open[moved.owner] = OwnerStream(call, moved.owner, self._forwarder.owners)
        for readers in (self._readers, self._forwarder.streams):
            readers.add(stream.reader)
            stream.reader.add_done_callback(readers.discard)
        return stream

    async def _ask(self, stream: OwnerStream, batch: pb.ReserveStreamRequest, idx: list[int],
                   groups: set[int]) -> dict[int, pb.ReserveOutcome]:
        items = [batch.reservations[n] for n in idx]
        try:
            response = await stream.ask(pb.ReserveStreamRequest(reservations=items), groups)
            if len(response.outcomes) != len(idx):
                raise _unknown(stream.address, f"answered {len(response.outcomes)} outcomes to {len(idx)} reservations")
        except (DomainError, OwnerRefused) as exc:
            self._forwarder.counted(METHOD, "error")
            return {n: _refused(item.reservation_id, exc) for n, item in zip(idx, items, strict=True)}
        self._forwarder.counted(METHOD, "ok")
        return dict(zip(idx, response.outcomes, strict=True))

    async def finish(self) -> None:
        """Half-close every outbound stream, and close it once its owner has ended it (within
        ``CLOSE_GRACE_S``): the inbound stream has ended with every batch answered."""
        self._closed = True
        streams = list(self._open.values())
        await asyncio.gather(*(stream.finish() for stream in streams))
        if streams:
            await asyncio.wait([stream.reader for stream in streams], timeout=CLOSE_GRACE_S)
        await self.aclose()

    async def aclose(self) -> None:
        """Close every outbound stream now and wait until their readers have ended: the inbound
        stream has ended (answered, failed or cancelled), so nothing more is asked of them."""
        self._closed = True
        streams = list(self._open.values())
        self._open.clear()
        for stream in streams:
            stream.close()
        if self._readers:  # a replaced stream's reader too: its call has been cancelled
            await asyncio.wait(list(self._readers))


class SentInTurn:
    """A ``ReserveStream`` batch's items owned by other processes, sent to their owners in the batch's turn
    (``now``: its ids claimed, its shards asked), before any later batch's — not once this process's own shards
    have answered it: a later batch with nothing to wait for here had its item there decided first, taking units
    an earlier batch's item was then refused for, where one process decides them in the order they came.
    ``at``: each command's place in the batch."""

    def __init__(self, at: list[int], batch: pb.ReserveStreamRequest, owners: OwnerStreams) -> None:
        self._at, self._batch, self._owners = at, batch, owners
        self.items: set[int] = set()
        self._asked: list[asyncio.Future[dict[int, pb.ReserveOutcome]]] = []

    def now(self, out: list[Any]) -> None:
        moved = {self._at[i]: result for i, result in enumerate(out) if isinstance(result, Moved)}
        if moved:
            self.items.update(moved)
            asking = asyncio.ensure_future(self._owners.answer(self._batch, moved))  # its asks made in this order
            asking.add_done_callback(exception_seen)  # the batch may end first (its shards refused it whole)
            self._asked.append(asking)

    async def answers(self, late: dict[int, Moved]) -> dict[int, pb.ReserveOutcome]:
        """The owners' outcomes of the items sent on: in the batch's turn, and ``late`` (sent now)."""
        if late:
            self._asked.append(asyncio.ensure_future(self._owners.answer(self._batch, late)))
        found: dict[int, pb.ReserveOutcome] = {}
        for outcomes in await asyncio.gather(*self._asked):
            found.update(outcomes)
        return found


def when_settled(batches: set[asyncio.Task[Any]], then: Callable[[], None]) -> None:
    """Call ``then`` once every task of ``batches`` has ended (now, when none is running). An ended
    stream's batches go on being decided (R8: applied whole, a retry replays them), each holding its
    request and its answer: were its place among ``max_reserve_streams`` freed at once, a caller
    opening and cancelling streams while Redis is slow would leave batches behind without bound."""
    running = [task for task in batches if not task.done()]
    if not running:
        then()
        return
    left = len(running)

    def ended(_task: asyncio.Task[Any]) -> None:
        nonlocal left
        left -= 1
        if not left:
            then()

    for task in running:
        task.add_done_callback(ended)


def check_answer_size(answer: pb.ReserveStreamResponse, batch: int, max_message_bytes: int,
                      decided: bool = True) -> None:
    """A batch's answer gRPC could not send (``max_message_bytes`` binds what the service sends
    too): it would end the stream ``RESOURCE_EXHAUSTED``, "send smaller ones", about reservations
    that were decided and are durable, and an OMS re-reserving them under new ids holds the stock
    twice. Ended instead ``OUTCOME_UNKNOWN`` (R7, R8), telling the caller to re-send them with the
    same ids in smaller batches, which answers what was decided (R5). ``decided`` False: every item
    was at fault (answered while the service recovers too), none decided, and the message says so
    (the stream still ends in doubt: the batches read after it may have been decided)."""
    size = answer.ByteSize()
    if size > max_message_bytes:
        said = ("they were decided; re-send them with the same ids in smaller batches, which answers what was decided"
                if decided else "none of them was decided (each at fault); re-send them in smaller batches to be "
                "told each one's fault")
        raise Unavailable(f"the answer to a batch of {batch} reservations ({size} bytes) exceeds max_message_bytes="
                          f"{max_message_bytes}: {said}", Reason.OUTCOME_UNKNOWN,
                          metadata={"limit": "max_message_bytes"})


def _unknown(owner: str, what: str) -> Unavailable:
    return Unavailable(f"the owner {owner} {what}; the reservations sent to it may have been decided: "
                       "retry them with the same ids, which answers what was decided", Reason.OUTCOME_UNKNOWN)


def _refused(reservation_id: str, exc: DomainError | OwnerRefused) -> pb.ReserveOutcome:
    status = exc.status if isinstance(exc, OwnerRefused) else rich_status(exc)
    return pb.ReserveOutcome(reservation_id=reservation_id, error=status)
