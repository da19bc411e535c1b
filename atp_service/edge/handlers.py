"""Method handlers built from a service's descriptor, so that bytes which are not a valid request
are answered ``INVALID_ARGUMENT`` before any servicer code runs.

grpc.aio parses a request with the generated ``FromString`` before the handler runs (for a request
stream: inside the servicer's iterator). A parse that raises ends the call ``UNKNOWN "Unexpected
<class DecodeError>"`` with an ERROR traceback in the log per call — so any caller, on the open
health and reflection services even without a token, could fill the log. Here parsing never raises:
it returns a ``Malformed`` marker, and the wrapped behaviour answers it ``INVALID_ARGUMENT`` naming
the message type, counts it (``atp_bad_requests_total``) and logs one rate-limited line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from atp_service.edge.calls import Call, CallBook
from atp_service.edge.errors import abort
from atp_service.edge.ratelog import RateLimitedLog
from atp_service.edge.stalls import OpenStreams, StallLimit
from atp_service.instruments import Counter
from reservation import DomainError, Reason

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
Behaviour = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Malformed:
    """What the deserializer returns for bytes that do not parse; ``message`` is the answer's text."""

    message: str


class MalformedRequest(Exception):
    """A message of a request stream did not parse: raised out of the servicer's iterator."""

    def __init__(self, bad: Malformed) -> None:
        super().__init__(bad.message)
        self.bad = bad


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, bad_requests: Counter,
                stalls: StallLimit, open_streams: OpenStreams | None = None,
                lines: RateLimitedLog | None = None, calls: CallBook | None = None) -> None:
    """Register ``servicer``'s methods of ``service``, as the generated ``add_..._to_server`` does, but as
    a generic handler only (no ``add_registered_method_handlers``): grpc.aio's server (grpcio 1.85) waits
    for its next call with ``asyncio.wait`` over one pending request per registered method, and one for
    the rest, at every call of any method: pure-Python work per call growing with the methods registered
    (about 65 bytecodes each: over 1,000 per unary call with this service's 17), where finding a generic
    handler's method is a dict lookup (grpc/grpc PR 43461 describes that accept loop's cost).

    A method the servicer leaves to the generated base class (a sync placeholder, like the aio
    health servicer's ``List``) is not registered: gRPC answers it UNIMPLEMENTED without the ERROR
    traceback the placeholder's NotImplementedError would log per call. Refusals of bad bytes are
    counted in ``bad_requests`` by method and logged at the rate ``lines`` allows (one ``refusal_lines``
    per service, shared by the services it registers; none: this registration's own). Every reply
    of a server stream is written under ``stalls`` (``stream_stall_s``): a caller that stops reading
    does not keep its stream for ever; with ``open_streams``, the service's server streams are
    bounded in number (the open services'). Every call is booked in ``calls`` while it runs (a graceful
    stop waits for those that can finish, and cuts the stalled ones: ``calls.py``)."""
    handlers, lines, calls = {}, lines or refusal_lines(), calls or CallBook(0.0)
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
            if open_streams is not None and method.server_streaming:
                behaviour = open_streams.bounded(behaviour)
            handlers[method.name] = _handler(method, behaviour, bad_requests, stalls, lines, calls)
        elif not behaviour.__module__.endswith("_pb2_grpc"):  # our own mistake: say so at start-up
            raise TypeError(f"{service.full_name}/{method.name}: the servicer's method must be async")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def refusal_lines() -> RateLimitedLog:
    """The rate limit of one service's ``bad_request`` lines (any caller can provoke them): each
    service's own, else a flood at another in the process (an embedder's, a test's) silenced its first ones."""
    return RateLimitedLog(log, logging.WARNING)


def _handler(method: MethodDescriptor, behaviour: Behaviour, bad_requests: Counter,
             stalls: StallLimit, lines: RateLimitedLog, calls: CallBook) -> grpc.RpcMethodHandler[Any, Any]:
    parse = _deserializer(method)
    serialize = GetMessageClass(method.output_type).SerializeToString
    refuse = _Refusal(method.name, bad_requests.labels(method.name), lines, calls)
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(_stream_stream(refuse, behaviour, stalls), parse, serialize)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(_stream_unary(refuse, behaviour), parse, serialize)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_unary_stream(refuse, behaviour, stalls), parse, serialize)
    return grpc.unary_unary_rpc_method_handler(_unary_unary(refuse, behaviour), parse, serialize)


def _deserializer(method: MethodDescriptor) -> Callable[[bytes], Any]:
    full_name = method.input_type.full_name
    parse = GetMessageClass(method.input_type).FromString
    upb_prefix = f"Error parsing message with type '{full_name}': "  # the type is named in ours already

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            reason = str(exc).removeprefix(upb_prefix) or "cannot be parsed"
            return Malformed(f"request is not a valid {full_name}: {reason}")

    return deserialize


class _Refusal:
    """How one method refuses bad bytes: counted, logged (rate-limited), INVALID_ARGUMENT."""

    __slots__ = ("_count", "_lines", "calls", "method")

    def __init__(self, method: str, counter: Any, lines: RateLimitedLog, calls: CallBook) -> None:
        self.method, self._count, self._lines, self.calls = method, counter, lines, calls

    async def booked(self, context: Context) -> Call:
        """The call booked (``calls.py``); one begun once a stop has cut the stalled calls: refused at once."""
        try:
            return self.calls.enter(self.method)
        except DomainError as exc:
            await abort(context, exc)

    async def __call__(self, bad: Malformed, context: Context) -> NoReturn:
        self._count.inc()
        self._lines.log("request refused", event="bad_request", rpc=self.method, peer=context.peer(),
                        code="INVALID_ARGUMENT", reason=bad.message)
        await abort(context, DomainError(bad.message, Reason.REQUEST_MALFORMED))


def _unary_unary(refuse: _Refusal, behaviour: Behaviour) -> Behaviour:
    book, method = refuse.calls, refuse.method

    async def handle(request: Any, context: Context) -> Any:
        # Booked at once while the book is open (every call: no coroutine of ``booked``'s); refused through it.
        call = await refuse.booked(context) if book.closed else book.enter(method)
        if type(request) is Malformed:
            await refuse(request, context)
        try:
            return await behaviour(request, context)
        finally:
            # Its answer or its status: gRPC writes it once this returns. ``call.write_begun()``, written
            # out (every call's; a refusal's ``abort`` has begun its status's write already).
            if call.writing_since is None:
                call.writing_since = monotonic()
                if book.settling:
                    book.moved()

    return handle


def _unary_stream(refuse: _Refusal, behaviour: Behaviour, stalls: StallLimit) -> Behaviour:
    if not inspect.isasyncgenfunction(behaviour):
        # A coroutine writing its answers with ``context.write`` (the health service's Watch): awaited,
        # not iterated, which ended every such call UNKNOWN with a traceback in the log.
        async def write_itself(request: Any, context: Context) -> Any:
            return await behaviour(request, stalls.context(refuse.method, context))

        return _unary_unary(refuse, write_itself)

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        call = await refuse.booked(context)
        if type(request) is Malformed:
            await refuse(request, context)
        replies = behaviour(request, context)
        try:
            async for reply in replies:
                with stalls.writing(refuse.method, context), call.writing():
                    yield reply
        finally:
            await replies.aclose()  # at once: its finally (drain bookkeeping) must not wait for the GC
            call.write_begun()  # its status: gRPC writes it once this ends

    return handle


def _stream_unary(refuse: _Refusal, behaviour: Behaviour) -> Behaviour:
    async def handle(requests: AsyncIterator[Any], context: Context) -> Any:
        call = await refuse.booked(context)
        try:
            return await behaviour(_Checked(requests, asyncio.current_task()), context)
        except MalformedRequest as exc:
            await refuse(exc.bad, context)
        finally:
            call.write_begun()

    return handle


def _stream_stream(refuse: _Refusal, behaviour: Behaviour, stalls: StallLimit) -> Behaviour:
    async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        # The servicer answers the messages read before the bad one, then the stream ends with it.
        call = await refuse.booked(context)
        replies = behaviour(_Checked(requests, asyncio.current_task()), context)
        try:
            async for reply in replies:
                with stalls.writing(refuse.method, context), call.writing():
                    yield reply
        except MalformedRequest as exc:
            await refuse(exc.bad, context)
        finally:
            await replies.aclose()
            call.write_begun()

    return handle


class _Checked:
    """The request stream, raising ``MalformedRequest`` at a message that did not parse, and ending once its
    call has (``call``, the call's task, has ended). A plain iterator, not an async generator: one layer less
    per message on the ReserveStream path.

    grpc.aio (grpcio 1.85) releases a call once its task has ended; a read begun after that (a ReserveStream's
    reader, its caller gone at the batch before) fails in gRPC's core at once, and grpcio's ``execute_batch``
    then keeps the read's callback and its future, never completed, for good (the stop's too): about one
    stream in ten closed early by its caller, 30-100 kept over 400 such streams. A read begun while the task
    runs is completed by the call's end."""

    __slots__ = ("_call", "_next", "_requests")

    def __init__(self, requests: AsyncIterator[Any], call: asyncio.Task[Any] | None) -> None:
        self._requests = requests
        self._call = call
        # Asked for at the first read only: grpc.aio makes its generator then, and one a handler never
        # reads (a stream refused at once) warns "never awaited" when collected — at any moment, even
        # inside a ``compile()``, where CPython 3.11 fails with a SystemError (pytest ended so).
        self._next: Callable[[], Awaitable[Any]] | None = None

    def __aiter__(self) -> _Checked:
        return self

    async def __anext__(self) -> Any:
        if self._call is not None and self._call.done():  # its caller gone: grpc.aio's own end of a cancelled stream
            raise StopAsyncIteration
        if (next_ := self._next) is None:
            next_ = self._next = self._requests.__aiter__().__anext__
        request = await next_()
        if type(request) is Malformed:
            raise MalformedRequest(request)
        return request
