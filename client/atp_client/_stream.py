"""The requests and answers of one ``ReserveStream`` call (``AtpClient.reserve_stream``).

A stream has no deadline of its own: it lasts as long as its caller has batches. What is bounded is
the service's silence while batches wait for their answers — a service that stops answering
(paused, wedged, a network that drops packets) must not keep the caller waiting for ever with its
batches in doubt. Not each batch's own wait: batches are sent ahead of the service (up to
``max_stream_inflight``), which decides them in turn; a batch far down that queue waits longer than
any one answer takes, from a service answering all along.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import grpc

from atp_client._core_status import KeptStatus
from atp_client._errors import (
    batch_too_large,
    invalid_field,
    request_too_large,
    stream_not_accepted,
    stream_unanswered,
)
from atp_client.pb.atp.v1 import atp_pb2 as pb

Batch = Sequence[pb.ReserveRequest]
Source = AsyncIterator[Batch] | Iterable[Batch]
MAX_STREAM_INFLIGHT = 64
"""The most batches sent and not answered, by default (``AtpClient(max_stream_inflight=…)``): the next is taken
from the caller's source only once an answer frees a place (the service decides ``max_stream_inflight``, 8, at once)."""
MAX_BATCH_RESERVATIONS = 1000
"""The most reservations in one batch, by default (``AtpClient(max_batch_reservations=…)``): the service's own
default ``max_batch_reservations``."""
STALL_SLACK_S = 0.05
"""How late a wait may return before the lateness counts as this process stalled, not the service silent."""
STALLS_FORGIVEN = 3
"""Waits a stall of this process may lengthen, each by the time it did not run, before a stream's bound (the service
to accept it, or to answer) counts on regardless: a caller whose every wait overran (its loop blocked in slices
longer than ``STALL_SLACK_S``) was credited every one, and a stream the service never accepted waited for ever."""
ACCEPTED_KEY = "atp-accepted"
"""Initial metadata of a ``ReserveStream`` the service has accepted (its headers, sent at once). A
refusal at the start comes without it: as a status alone, which grpcio may hand over after the
(empty) headers."""


async def accepted(call: Any) -> bool:
    """Whether the service accepted the ``ReserveStream`` ``call``: its headers carry ``ACCEPTED_KEY``.
    False: the call is refused at its start (its status follows); nothing may be written to it."""
    return any(key == ACCEPTED_KEY for key, _ in await call.initial_metadata() or ())


class _End:
    """What ``Batches._next`` returns past the source's last batch."""


END = _End()


class Batches:
    """The caller's batches as ``ReserveStream`` requests, and when each still unanswered was sent.
    grpc.aio cancels the call when its request iterator raises, which loses the answers to the
    batches already sent (reservations the service may hold) and tells the caller
    ``CancelledError``. Here a failing source only ends the requests (a half-close: the service
    answers everything it was sent) and keeps its error in ``failure``. So does a batch larger than
    ``max_request_bytes``: refused unsent (``InvalidRequest``, ``LIMIT_EXCEEDED``), no batch after it
    taken from the source. Sent, gRPC on the service's side ended the whole stream, every batch sent
    before it and not answered yet left in doubt. And a batch of more than ``max_batch_reservations``, or of no
    reservations (``INVALID_FIELD``): sent, the service ends the stream ``InvalidRequest``, told as it is though
    grpcio writes its own ``INTERNAL`` over it when a batch written after it fails (``told``).

    At most ``max_inflight`` batches are sent and not answered: the next is taken from the source
    only once an answer frees a place. The service reads ``max_stream_inflight`` batches ahead, but
    gRPC takes whatever is written, buffered unread, so a service deciding nothing (Redis paused,
    a shard wedged) drained the source — thousands of batches a second, every one in doubt at the end."""

    def __init__(self, batches: Source, max_request_bytes: int | None = None,
                 max_inflight: int = MAX_STREAM_INFLIGHT, max_batch: int | None = MAX_BATCH_RESERVATIONS) -> None:
        self.batches = batches
        self.max_request_bytes = max_request_bytes
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.failure: Exception | None = None
        self._taken = 0  # batches taken from the source
        self._sent: deque[float] = deque()  # monotonic send time of each batch not answered yet
        self._reading_since = float("-inf")  # monotonic time the caller asked for the next answer
        self._stalled = Stalls()  # time since then this process did not run (``_until_read``): not the service silent
        self._unaccepted_stalled = Stalls()  # the same, from the call's opening until the service accepted it
        self._more = asyncio.get_running_loop().create_future()  # resolved when a batch is sent
        self._freed = asyncio.get_running_loop().create_future()  # resolved when a batch is answered
        self._call: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._opened_at = float("inf")
        self._accepted = asyncio.get_running_loop().create_future()  # the service's headers came, or the end
        self._sender: asyncio.Task[Any] | None = None  # grpc.aio's task taking batches from ``requests``
        self._ended = False  # ``end``: the call over, no batch taken after it
        self._done_sending = asyncio.get_running_loop().create_future()  # resolved when ``requests`` has ended
        self._done_sending_at = float("inf")  # monotonic time it did
        self._refused_at_start = False  # the service's headers came without ``ACCEPTED_KEY``: nothing sent
        self._kept = KeptStatus()  # the call's first status not grpcio's own

    def opened(self, call: Any) -> None:
        """The call ``requests`` feeds: its first batch waits until the service has accepted it."""
        self._opened_at = time.monotonic()
        self._call.set_result(call)
        call.add_done_callback(self._kept.note)

    @property
    def status(self) -> grpc.aio.AioRpcError | None:
        """The call's first status not grpcio's own ``INTERNAL`` (``KeptStatus``)."""
        return self._kept.status

    async def told(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """``error``, the call's failure, or the status the service sent where ``error`` is grpcio's own
        ``INTERNAL`` (``KeptStatus.told``)."""
        return await self._kept.told(self._call.result() if self._call.done() else None, error)

    async def requests(self) -> AsyncIterator[pb.ReserveStreamRequest]:
        # The service sends its headers once it has accepted the stream. A batch written before then
        # races a refusal at the start (a role, a token, max_reserve_streams): grpcio's asyncio client
        # then tells INTERNAL "Internal error from Core" in its place (grpc/grpc#36066).
        self._sender = asyncio.current_task()
        try:
            call = await self._call
            taken = await accepted(call)
            self._accepted.set_result(None)
            if not taken:
                self._refused_at_start = True
                return
            try:
                source = aiter(self.batches) if isinstance(self.batches, AsyncIterable) else iter(self.batches)
                while not isinstance(batch := await self._next(source), _End):
                    if (request := self._sending(batch)) is None:
                        return
                    yield request
            except Exception as exc:  # the caller's own error: raised to it once the answers are in
                self.failure = exc
        finally:  # no batch is sent after this: once every one sent is answered, only the status is missing
            self._done_sending_at = time.monotonic()
            if not self._done_sending.done():
                self._done_sending.set_result(None)

    async def _next(self, source: AsyncIterator[Batch] | Iterator[Batch]) -> Batch | _End:
        """The source's next batch once fewer than ``max_inflight`` wait for their answers; ``END`` past its last,
        or once the call is over."""
        while len(self._sent) >= self.max_inflight and not self._ended:
            if self._freed.done():
                self._freed = asyncio.get_running_loop().create_future()
            await self._freed
        if self._ended:
            return END
        if isinstance(source, AsyncIterator):
            return await anext(source, END)
        return next(source, END)

    def end(self) -> None:
        """The call over (its status came, or the caller left it): no batch is taken or sent after it. grpc.aio
        stops its sender only for a call it cancels, not one already over: a sender waiting for an answer to free
        a place (``max_inflight`` unanswered when the service ended the stream), or for the caller's source,
        waited for ever, the source held open."""
        self._ended = True
        if self._sender is not None and self._sender is not asyncio.current_task():
            self._sender.cancel()

    @property
    def unanswered(self) -> int:
        """Batches sent and not answered yet."""
        return len(self._sent)

    def _sending(self, batch: Sequence[pb.ReserveRequest]) -> pb.ReserveStreamRequest | None:
        """``batch`` as the request to send, noted sent; None (``failure`` set): too large, not sent."""
        request = pb.ReserveStreamRequest(reservations=batch)
        self._taken += 1
        if not request.reservations:  # the service ends the stream at it: a batch sent after it would race that end
            self.failure = invalid_field("reservations", f"ReserveStream batch {self._taken} has no reservations: at "
                                         "least one is required")
            return None
        if self.max_batch is not None and len(request.reservations) > self.max_batch:
            self.failure = batch_too_large(self._taken, len(request.reservations), self.max_batch)
            return None
        if self.max_request_bytes is not None and (size := request.ByteSize()) > self.max_request_bytes:
            self.failure = request_too_large(f"ReserveStream batch {self._taken}", size, self.max_request_bytes)
            return None
        self._sent.append(time.monotonic())
        if not self._more.done():
            self._more.set_result(None)
        return request

    async def answers(self, call: Any, answer_timeout_s: float) -> AsyncIterator[pb.ReserveStreamResponse]:
        """The call's answers, one per batch in order; no answer for ``answer_timeout_s`` while a batch
        waits for one (counted from the caller's asking for it — the time the caller spends on the last
        answer is not the service's silence — or from the oldest batch's send if later) ends
        the call DEADLINE_EXCEEDED, reason ``OUTCOME_UNKNOWN`` (the outcome of every batch not answered
        is in doubt: the caller retries them with the same ids, R5, R7). A stream not accepted within
        ``answer_timeout_s`` of its opening ends UNAVAILABLE, ``NOT_CONNECTED``: no batch was sent. Every batch sent
        answered and none to send (the source done, a batch refused unsent), no status for ``answer_timeout_s`` (a
        service paused, a network or a proxy holding its frames) ends the answers: nothing is in doubt, and the caller
        ends the call; one refused at its start (bare headers, then nothing) ends UNAVAILABLE, ``NOT_CONNECTED``."""
        while True:
            # Not from the last answer: a caller away past the bound (its own awaits on that answer) had the stream
            # ended at once, the answer the service had long sent unread, every batch in doubt. The service bounds
            # a caller that stops reading itself (stream_stall_s).
            self._reading_since, self._stalled = time.monotonic(), Stalls()
            read = asyncio.ensure_future(call.read())
            try:
                if not await self._until_read(read, answer_timeout_s):
                    return  # every answer in hand: only the status is missing, which tells nothing of a batch
            finally:
                read.cancel()
            answer = read.result()
            if answer is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc.aio's end of stream
                return
            if self._sent:
                self._sent.popleft()
            if not self._freed.done():
                self._freed.set_result(None)
            yield answer

    async def _until_read(self, read: asyncio.Future[Any], answer_timeout_s: float) -> bool:
        """Until ``read`` is done: True. False: every batch sent is answered, none will be sent, and the service has
        said nothing since (its status) for ``answer_timeout_s``."""
        while not read.done():
            if not self._accepted.done():  # nothing sent yet: a service that never accepts ends it, certainly
                asked = time.monotonic()
                left = self._opened_at + answer_timeout_s + self._unaccepted_stalled.seconds - asked
                if left <= 0:
                    raise stream_not_accepted(answer_timeout_s)
                await asyncio.wait({read, self._accepted}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                self._unaccepted_stalled.note(asked, left)  # this process stalled: see below
                continue
            if not self._sent and not self._done_sending.done():  # nothing in flight: the caller's source sets the pace
                if self._more.done():
                    self._more = asyncio.get_running_loop().create_future()
                await asyncio.wait({read, self._more, self._done_sending}, return_when=asyncio.FIRST_COMPLETED)
                continue
            # A batch waiting for its answer, or, every batch answered and none to send, the status: a service gone
            # silent after its last answer (paused, a network or a proxy holding its frames) kept the caller's
            # ``async for`` waiting for ever, though nothing was in doubt.
            asked = time.monotonic()
            since = self._sent[0] if self._sent else self._done_sending_at
            left = max(since, self._reading_since) + answer_timeout_s + self._stalled.seconds - asked
            if left <= 0:
                if self._sent:
                    raise stream_unanswered(len(self._sent), answer_timeout_s)
                if self._refused_at_start:  # bare headers, then no refusal: no batch was sent
                    raise stream_not_accepted(answer_timeout_s)
                return False
            await asyncio.wait({read}, timeout=left)
            # Back later than asked: this process did not run for a while (a collection, a starved CPU, the caller's
            # own blocking work), and an answer that came then is not read yet — the timeout ran first. The wait is
            # no silence of the service (when in it the stall began is not known): it ended streams the service
            # answered all along, every batch in doubt.
            self._stalled.note(asked, left)
        return True


class Stalls:
    """The time this process did not run while a stream waited on one of its bounds, credited to that bound: at most
    ``STALLS_FORGIVEN`` waits' worth, so the bound still ends a wait whatever the caller's loop does."""

    __slots__ = ("count", "seconds")

    def __init__(self) -> None:
        self.seconds, self.count = 0.0, 0

    def note(self, asked: float, left: float) -> None:
        """A wait begun at ``asked`` for at most ``left`` has ended: all of it credited when it ended later than
        ``STALL_SLACK_S`` past its bound (when in it the stall began is not known), within ``STALLS_FORGIVEN``."""
        waited = time.monotonic() - asked
        if waited - left > STALL_SLACK_S and self.count < STALLS_FORGIVEN:
            self.seconds, self.count = self.seconds + waited, self.count + 1


__all__ = ["ACCEPTED_KEY", "MAX_BATCH_RESERVATIONS", "MAX_STREAM_INFLIGHT", "Batches", "Source", "Stalls", "accepted"]
