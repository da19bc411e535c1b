"""A call for a shard group another service process owns: forwarded to the owner, or redirected.

The engine refuses such a call ``Moved`` before any work. A caller that routes by itself
(``atp-routing: redirect``) is told where to go: the ``GROUP_MOVED`` refusal with ``atp-moved``
(``errors.trailers_of``). So is a call already forwarded once (``atp-forwarded``: never a loop), a
call for a group no process owns now, and a call of a method not forwarded whole (its request may
need several groups). Any other call is sent on to the owner as it came — the same request message,
the caller's token, the caller's remaining deadline — and the owner's answer, or refusal with its
trailing metadata, is the caller's answer. The calls that may need several groups are split by
owner instead: ``RecordEvents`` (``forward_facts``), ``GetAvailability`` and ``LoadCounts`` (``ask_owners``) and
``ReserveStream`` (``open_stream``, ``edge.streams``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf.message_factory import GetMessageClass

from atp_client import FORWARDED_KEY, REDIRECT, ROUTING_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import DETAILS_KEY, carried_reason
from atp_service.edge.owner_watch import OwnerLost, OwnerWatch
from atp_service.edge.peer_pool import MAX_PEERS, PEER_CLOSE_GRACE_S, PeerChannels
from atp_service.edge.ratelog import OncePerKey
from atp_service.edge.routing import RoutingTable, groups_of, serving_of
from atp_service.metrics import EdgeMetrics
from atp_service.tasks import exception_seen
from reservation import DomainError, Moved, NotFound, Reason, Unavailable

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AvailabilityService"]
LOCATED_METHODS = frozenset({"Confirm", "Release", "Fulfill", "GetReservation"})
"""The calls naming only a reservation: where its record is held is asked of every process."""
FORWARDED_METHODS = frozenset({"RecordEvents", "Reserve", "Confirm", "Release", "Fulfill", "GetReservation",
                               "SetSafetyStock", "ExplainAvailability"})
"""The unary calls that need one group (a reservation's home, a SKU's): the owner answers them whole."""
CHANGES = frozenset({"RecordEvents", "LoadCounts", "Reserve", "Confirm", "Release", "Fulfill", "SetSafetyStock"})
"""The calls forwarded that change state: one lost with its owner may have been made (R7)."""
_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                   grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
"""gRPC's own ends of a forwarded call in the owner's hands; DEADLINE_EXCEEDED: ``PEER_CALL_MAX_S`` ran out
(or the caller's deadline, whom nothing is answered then); CANCELLED: by the owner (its stop past its grace) or
its channel closed (the stop) — never by this caller going away, which ends the forwarding itself."""
_NOT_SENT = "failed to connect to all addresses"
"""gRPC's own words for a call it never sent: no connection to the owner was made."""
TLS_REFUSAL_LOG_S = 60.0
"""How often a peer whose TLS handshake fails is logged (``peer_tls_refused``), at most."""
_TLS_WORDS = ("tls", "ssl", "handshake", "certificate")
"""What gRPC's refusal of a connection says when the TLS handshake failed (its own words vary)."""
_ANSWERS = {m.name: GetMessageClass(m.output_type).FromString for m in SERVICE.methods}
_CALLER_GONE = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
_DECISIONS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                        grpc.StatusCode.FAILED_PRECONDITION})
"""Refusals only the process holding a reservation answers a located call (the others: ``GROUP_MOVED``)."""
_PASSED = frozenset({"authorization"})
"""The caller's metadata a forwarded call carries."""
Refusal = TypeVar("Refusal", bound=BaseException)
StreamCall = grpc.aio.StreamStreamCall[pb.ReserveStreamRequest, pb.ReserveStreamResponse]
PEER_CALL_MAX_S = 30.0
"""The longest a call sent on to a peer may take when its caller set no deadline: a peer that
stops answering (paused, cut off) never holds a caller, or a stream's later batches, for good."""
PEER_KEEPALIVE_MS = 10_000
"""Pings on an idle-looking peer channel: a peer whose host or process stopped answering is found
out within this and ``PEER_KEEPALIVE_TIMEOUT_MS`` (its kernel may keep the TCP connection open)."""
PEER_KEEPALIVE_TIMEOUT_MS = 5_000
PEER_RECONNECT_MAX_MS = 1_000
"""The longest wait between attempts to connect to a peer that does not answer. gRPC's own grows
with the outage up to 120 s: a peer back at its address (a restart, a host back) and owning its
groups again was not tried for up to two minutes, every call, order step and fact sent there
refused meanwhile. An attempt a second to a peer that is down costs nothing worth saving."""
_OPTIONS = [
    ("grpc.enable_retries", 0),  # one try: the caller retries, with its own policy and deadline
    ("grpc.max_receive_message_length", -1),  # the owner applies its own limits
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", PEER_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", PEER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PEER_KEEPALIVE_TIMEOUT_MS),  # grpcio 1.85 times a ping out by this one (1 min)
    ("grpc.http2.max_pings_without_data", 0),  # else pings stop after 2 on a call sending nothing (a quiet stream)
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.initial_reconnect_backoff_ms", PEER_RECONNECT_MAX_MS),
    ("grpc.max_reconnect_backoff_ms", PEER_RECONNECT_MAX_MS),
]


def _bounded(remaining: float | None) -> float:
    """A peer call's timeout: the caller's remaining deadline, never more than ``PEER_CALL_MAX_S``."""
    return PEER_CALL_MAX_S if remaining is None else min(remaining, PEER_CALL_MAX_S)


class Relayed(Exception):
    """The owner refused a forwarded call: the caller is answered the same status, message and
    trailing metadata (status details, retry pushback, ``atp-moved``)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...]) -> None:
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> Relayed:
        received = cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())
        trailers = tuple((key, value) for key, value in received
                         if not key.startswith(":") and key not in ("grpc-status", "grpc-message"))
        return cls(error.code(), error.details() or "", trailers)

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        remaining = context.time_remaining()
        if self.code in _CALLER_GONE and remaining is not None and remaining <= 0:
            raise asyncio.CancelledError  # the caller's own deadline ended the forwarded call: nobody to answer
        await context.abort(self.code, self.details, self.trailers)
        raise AssertionError("unreachable: grpc.aio's abort raises")


class Forwarder:
    """Sends calls on to their group's owner over one pooled channel per peer address.

    ``tls_root``: the PEM root certificate peers are verified with (the service runs TLS); None:
    plaintext. ``tls_identity``: (private key, certificate chain) presented to peers that require
    client certificates (mutual TLS)."""

    def __init__(self, metrics: EdgeMetrics, tls_root: bytes | None = None,
                 tls_identity: tuple[bytes, bytes] | None = None, max_peers: int = MAX_PEERS) -> None:
        self.address = ""
        """This process's advertised address: what a forwarded call's ``atp-forwarded`` names."""
        self._counted = metrics.forwarded
        self._credentials = None if tls_root is None else grpc.ssl_channel_credentials(
            root_certificates=tls_root, private_key=tls_identity[0] if tls_identity else None,
            certificate_chain=tls_identity[1] if tls_identity else None)
        self._tls_told = OncePerKey(TLS_REFUSAL_LOG_S, max_peers)
        self._channels = PeerChannels(self._connect, max_peers)
        self.streams: set[asyncio.Task[None]] = set()
        """The reader of each outbound ``ReserveStream`` open now (``edge.streams``): empty once
        every inbound stream that opened one has ended."""
        self.routing: Callable[[], RoutingTable] = lambda: RoutingTable(0, self.address, ())
        """Who owns which group now: whom a reservation unknown here is asked of (``_locate``)."""
        self.owners = OwnerWatch()  # the calls forwarded now, told when the routes read name another owner

    async def answer(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any],
                     moved: Moved) -> Any:
        """The owner's answer to the call; raises ``moved`` to redirect the caller, ``Relayed`` to
        pass the owner's refusal on."""
        metadata = tuple(context.invocation_metadata() or ())
        if moved.group < 0 and method in LOCATED_METHODS and not _forwarded(metadata):
            return await self._locate(method, request, context, metadata, moved)
        if not self._forwards(method, moved, metadata):
            self._counted.labels(method, "redirected").inc()
            raise moved
        try:  # ended at once should the routes name another owner meanwhile (``edge.owner_watch``)
            answer = await self.owners.answer(self._send(moved.owner, method, request, context, metadata),
                                              moved.group, moved.owner, method in CHANGES)
        except grpc.aio.AioRpcError as exc:
            self._counted.labels(method, "error").inc()
            raise refusal_of(method, moved.owner, exc) from None
        except OwnerLost as lost:
            self._counted.labels(method, "error").inc()
            raise lost.refusal from None
        self._counted.labels(method, "ok").inc()
        return answer

    async def _send(self, address: str, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any],
                    metadata: Sequence[tuple[str, Any]]) -> Any:
        return await self.send(address, method, request, _bounded(context.time_remaining()), metadata)

    async def send(self, address: str, method: str, request: Any, within_s: float | None,
                   metadata: Sequence[tuple[str, Any]], own: Sequence[tuple[str, str]] = ()) -> Any:
        """``method`` called at the peer ``address`` (answered ``within_s``, None: no deadline),
        carrying ``metadata``'s token and ``atp-forwarded`` (and ``own``: this process's own metadata)."""
        with self.using(address) as channel:  # not closed under the call (``edge.peer_pool``)
            call = channel.unary_unary(f"/{SERVICE.full_name}/{method}", _serialized, _ANSWERS[method])
            try:
                return await call(request, timeout=within_s, metadata=(*self._passed(metadata), *own))
            except grpc.aio.AioRpcError as exc:
                self.tell_tls_refusal(address, exc)
                raise

    def tell_tls_refusal(self, address: str, error: grpc.aio.AioRpcError) -> None:
        """Log (``peer_tls_refused``, once a while per peer) a call to ``address`` never sent because
        the TLS handshake failed: a certificate the other side does not trust, or one not naming the
        address. Else nothing said why every call, order step and fact for that peer's groups was
        refused "failed to connect" while it was up and SERVING."""
        details = error.details() or ""
        if (error.code() == grpc.StatusCode.UNAVAILABLE and details.startswith(_NOT_SENT)
                and any(word in details.lower() for word in _TLS_WORDS) and self._tls_told.due(address)):
            log.error("peer %s: the TLS handshake failed, nothing is sent there (%s); check peer_tls_ca against "
                      "its certificate, and that the certificate names the address it advertises", address, details,
                      extra={"event": "peer_tls_refused", "peer": address, "reason": details})

    def _passed(self, metadata: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
        """What a call sent on carries: the caller's token, and ``atp-forwarded`` (never sent on again)."""
        return (*((k, v) for k, v in metadata if k in _PASSED), (FORWARDED_KEY, self.address))

    def open_stream(self, address: str, context: grpc.aio.ServicerContext[Any, Any]) -> StreamCall:
        """A ``ReserveStream`` to the owner at ``address`` on behalf of the inbound call ``context``
        (its token, its remaining deadline), written and read by the caller (``edge.streams``)."""
        channel, ended = self._channels.taken(address)  # in use until the stream ends: not closed under it
        try:
            call = channel.stream_stream(f"/{SERVICE.full_name}/ReserveStream", _serialized,
                                         pb.ReserveStreamResponse.FromString)
            metadata = tuple(context.invocation_metadata() or ())
            stream = cast(StreamCall, call(None, timeout=context.time_remaining(), metadata=self._passed(metadata)))
        except BaseException:
            ended()
            raise
        stream.add_done_callback(lambda _call: ended())
        return stream  # it lasts as long as its caller's; each answer on it is bounded (streams.OwnerStream.ask)

    async def ask_owners(self, method: str, requests: dict[str, Any],
                         context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
        """Each owner's answer to its part of a call split by owner (``requests`` by address, all
        sent at once); any owner's refusal refuses the call (``Relayed``), one in doubt before the others."""
        answers = await self.ask_each(method, requests, context)
        if refusals := [answer for answer in answers.values() if isinstance(answer, (DomainError, Relayed))]:
            raise told_first(refusals)  # R7: a part in doubt is said so, whatever another owner answered
        return answers

    async def ask_each(self, method: str, requests: dict[str, Any],
                       context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
        """Each owner's answer to its part of a call split by owner (``requests`` by address, all
        sent at once) or its refusal (``Relayed``, or ``Unavailable`` for a part in doubt or not
        sent): every part is waited for, so the caller can be told which parts were done. A part ends
        once the routes name another owner for one of its own groups (``OwnerWatch``)."""
        metadata = tuple(context.invocation_metadata() or ())
        owners = list(requests)
        shards = self.owners.shards
        answers = await asyncio.gather(*(self.owners.asked(partial(self._send, owner, method, requests[owner], context,
                                                                   metadata), owner, method in CHANGES,
                                                           groups_of(requests[owner], shards))
                                         for owner in owners), return_exceptions=True)
        out: dict[str, Any] = {}
        for owner, answer in zip(owners, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                answer = refusal_of(method, owner, answer)
            elif isinstance(answer, BaseException) and not isinstance(answer, DomainError):
                raise answer
            self.counted(method, "error" if isinstance(answer, (DomainError, Relayed)) else "ok")
            out[owner] = answer
        return out

    def counted(self, method: str, outcome: str, n: int = 1) -> None:
        """``atp_forwarded_calls_total``: ``n`` more calls (or parts of one) of ``method`` ended ``outcome``."""
        self._counted.labels(method, outcome).inc(n)

    async def forward_facts(self, request: pb.RecordEventsRequest, by_owner: dict[str, list[int]],
                            context: grpc.aio.ServicerContext[Any, Any], moved: Moved) -> dict[str, Any]:
        """The facts of ``request`` at these indexes, sent to their groups' owners (one call each, at once):
        each owner's answer (``RecordEventsResponse``) or refusal (``ask_each``), by address."""
        if not self._forwards("RecordEvents", moved, tuple(context.invocation_metadata() or ())):
            self._counted.labels("RecordEvents", "redirected").inc()
            raise moved
        parts = {o: pb.RecordEventsRequest(events=[request.events[n] for n in at]) for o, at in by_owner.items()}
        return await self.ask_each("RecordEvents", parts, context)

    async def _locate(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any],
                      metadata: Sequence[tuple[str, Any]], here: Moved) -> Any:
        """A call naming a reservation this process does not hold: asked of every other process at once (each refuses
        it, nothing done, unless it holds the record); the holder's answer, or refusal, is the caller's (``located``,
        else ``error``: each cost a call to every peer). NOT_FOUND only once the processes that said "not here" answered
        for every group between them (a group in the middle of a hand-over is answered for by none: retry)."""
        table = self.routing()
        owners = {r.address for r in table.routes if r.address} - {self.address}
        covered = set(here.serving)
        asks = [asyncio.ensure_future(self.owners.asked(partial(self._send, a, method, request, context, metadata), a,
                                                        method in CHANGES)) for a in sorted(owners)]
        for ask in asks:
            ask.add_done_callback(exception_seen)  # those not looked at once the holder answered
        try:
            holder = await _holder(asks)
        finally:
            for ask in asks:  # the holder answered: a peer that does not answer is not waited for
                ask.cancel()
        self._counted.labels(method, "error" if holder is None else "located").inc()
        if isinstance(holder, Relayed):  # the holder's refusal by decision
            raise holder
        if holder is not None:  # the holder's answer first, whatever the others said
            return holder
        refusals: list[Relayed | DomainError] = []
        for address, answer in zip(sorted(owners), [cast(BaseException, ask.exception()) for ask in asks], strict=True):
            if not isinstance(answer, grpc.aio.AioRpcError | DomainError):  # each refused: none holds it
                raise answer
            serving = None if isinstance(answer, DomainError) else serving_of(answer)
            if serving is None:  # the holder's refusal, a peer that did not answer, or one not asked (no channel)
                refusals.append(answer if isinstance(answer, DomainError) else refusal_of(method, address, answer))
            covered |= serving or set()
        if refusals:  # one in doubt (R7: its holder's, lost in hand) whatever others said, not the first by address
            raise told_first(refusals)
        if covered >= set(range(table.shards)):
            raise NotFound(f"reservation_id: no reservation {getattr(request, 'reservation_id', '')!r}")
        raise Moved(-1, "", serving=here.serving)  # a group changing hands: retry

    def _forwards(self, method: str, moved: Moved, metadata: Sequence[tuple[str, Any]]) -> bool:
        return method in FORWARDED_METHODS and self.forwards(moved, metadata)

    def forwards(self, moved: Moved, metadata: Sequence[tuple[str, Any]]) -> bool:
        """Whether work refused ``moved`` goes on to its owner; else its caller is told where to go:
        when it routes by itself, when it was forwarded already (never a loop), when no other
        process owns the group now."""
        if not moved.owner or moved.owner == self.address:
            return False
        return not _forwarded(metadata) and not any(k == ROUTING_KEY and v == REDIRECT for k, v in metadata)

    def owner_for(self, local: Callable[[int], object], shard: int, metadata: Sequence[tuple[str, Any]]) -> str:
        """Where the work of ``shard`` goes: "" to this process (``local``, the engine's, does not
        refuse it), else the owner it is forwarded to; raises ``Moved`` where the caller is to be
        redirected instead (``forwards``) — decided for every part of a call before any is applied."""
        try:
            local(shard)
        except Moved as moved:
            if not self.forwards(moved, metadata):
                raise
            return moved.owner
        return ""

    def using(self, address: str) -> AbstractContextManager[grpc.aio.Channel]:
        """The pooled channel to the peer process at ``address``, for a call made in the block: not closed
        until the block ends (``edge.peer_pool``). Raises ``Unavailable``, nothing sent, once ``aclose`` began
        (a saga still running during a stop would open a channel nothing closes) or past ``MAX_PEER_CHANNELS``."""
        return self._channels.using(address)

    def _connect(self, address: str) -> grpc.aio.Channel:
        if self._credentials:
            return grpc.aio.secure_channel(address, self._credentials, options=_OPTIONS)
        return grpc.aio.insecure_channel(address, options=_OPTIONS)

    @property
    def peers(self) -> list[str]:
        """The addresses a pooled channel is open to, least recently used first."""
        return self._channels.peers

    @property
    def open_channels(self) -> int:
        """Channels open to peers: the pool's, and those that left it with calls in flight."""
        return self._channels.open

    async def aclose(self, grace_s: float = PEER_CLOSE_GRACE_S) -> None:
        """Close every peer channel (the service's stop, once gRPC has stopped: no call is being
        forwarded any more, so nothing waits out the grace)."""
        readers = list(self.streams)  # none left once gRPC has stopped and its streams have ended
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await self._channels.aclose(grace_s)


def refusal_of(method: str, owner: str, error: grpc.aio.AioRpcError) -> Relayed | Unavailable:
    """What the caller is answered when the owner's answer to its forwarded call is ``error``: the
    owner's refusal as it came (``Relayed``) — but a change whose owner, or the connection to it,
    was lost with the call in hand (gRPC's own status, no details of the service's) is in doubt
    (R7): the owner may have made it. Passed on bare, it read as an owner never reached, nothing
    done, and gRPC's retry at the caller turned it into one ("failed to connect", or
    ``GROUP_MOVED`` during the takeover). ``OUTCOME_UNKNOWN`` is not retried by gRPC."""
    own = any(key == DETAILS_KEY for key, _ in cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ()))
    details = error.details() or ""
    if method in CHANGES and not own and error.code() in _LOST and not details.startswith(_NOT_SENT):
        return Unavailable(f"the owner {owner} was lost with this call in hand ({error.code().name}: {details}); "
                           "it may have been made: retry with the same ids, which answers what was decided",
                           Reason.OUTCOME_UNKNOWN)
    return Relayed.of(error)


def told_first(refusals: Sequence[Refusal]) -> Refusal:
    """The refusal told of a call several processes refused: one in doubt (R7: ``OUTCOME_UNKNOWN``, a part may
    have been made) before any other, which would hide it (a definite one, "failed to connect"); else the first."""
    return next((refusal for refusal in refusals if in_doubt(refusal)), refusals[0])


def in_doubt(refusal: BaseException) -> bool:
    """Whether ``refusal`` says the change may have been made (``OUTCOME_UNKNOWN``), this process's or relayed."""
    if isinstance(refusal, Relayed):
        return carried_reason(refusal.code, refusal.details, refusal.trailers) == Reason.OUTCOME_UNKNOWN.name
    return isinstance(refusal, DomainError) and refusal.reason is Reason.OUTCOME_UNKNOWN


def _serialized(message: Any) -> bytes:
    return cast(bytes, message.SerializeToString())


def _forwarded(metadata: Sequence[tuple[str, Any]]) -> bool:
    return any(k == FORWARDED_KEY for k, _ in metadata)


async def _holder(asks: Sequence[asyncio.Future[Any]]) -> Any:
    """The answer of the process holding the reservation (its refusal by decision as ``Relayed``)
    as soon as it comes; None once every ask was refused otherwise (not held there, not reached).
    Not the others': one not answering would hold the caller to its deadline."""
    pending = set(asks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for ask in done:
            error = ask.exception()
            if error is None:
                return ask.result()
            if isinstance(error, grpc.aio.AioRpcError) and error.code() in _DECISIONS:
                return Relayed.of(error)
    return None
