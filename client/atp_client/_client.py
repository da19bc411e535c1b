"""``AtpClient``: a small async client over grpc.aio, used by atpctl, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_client._channel import (
    KEEPALIVE_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_KEEPALIVE_S,
    RECONNECT_MAX_S,
    keepalive_options,
    reconnect_options,
)
from atp_client._core_status import release
from atp_client._errors import not_connected, request_too_large, stream_cut_unread, typed
from atp_client._stream import MAX_BATCH_RESERVATIONS, MAX_STREAM_INFLIGHT, Batches, Source
from atp_client._time import checked_timeout
from atp_client._watch import watch_request, watched
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc

LineLike = tuple[str, str, int]
SERVICE = "atp.v1.AvailabilityService"

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
"""Refusals, never decisions: shed load, Redis unreachable, or (CANCELLED — a client's own cancellation
raises asyncio.CancelledError instead) gRPC's bounded queue ahead of the service being full."""


SERVICE_CONFIG: dict[str, Any] = json.loads(resources.files(__package__).joinpath("service_config.json").read_text())
"""The service's retry policy as a gRPC service config (``service_config.json``), for any gRPC client."""

MAX_ATTEMPTS = 5
"""gRPC's own cap on ``maxAttempts``."""
RETRY_BUFFER_BYTES = 8 * 1024 * 1024
"""Requests up to this size are kept for a retry (the service takes messages up to 4 MiB)."""
MAX_REQUEST_BYTES = 4 << 20
"""The largest request ``AtpClient`` sends, by default: the service's own default ``max_message_bytes``
(``ATP_MAX_MESSAGE_BYTES``). gRPC's retry policy re-sends a request the service refused as too large
(``RESOURCE_EXHAUSTED``, retried for the service's shed load) up to ``maxAttempts`` times: refused here,
it is never sent."""
RECEIVE_KEY = "grpc.max_receive_message_length"
MAX_ANSWER_BYTES = (1 << 31) - 1
"""The largest answer this client reads: the most a service can be set to send (its ``max_message_bytes``,
at most gRPC's int32 bound), each answer bounded there by the service. gRPC's own default, 4 MiB, refused
in this client every answer of a service whose limit was raised past it — a change made, told
RESOURCE_EXHAUSTED with no reason ("Received message larger than max"), and its retry the same for ever."""
@dataclass(frozen=True)
class RetryPolicy:
    """How refused calls are retried — by gRPC itself, from a service config built from these
    fields (``service_config()``; the defaults are ``service_config.json``). Safe for every RPC:
    changes carry their ids (reservation, operation, event), so a retry of one that was decided
    replays its answer. gRPC waits a random time below the backoff bound (which grows from
    ``first_backoff_s`` by ``multiplier`` up to ``max_backoff_s``), or what the server's pushback
    (``RetryInfo``) says; every try stays within the call's deadline."""

    attempts: int = 5
    """Tries in all, the first included (gRPC allows at most 5)."""
    first_backoff_s: float = 0.05
    """Bound of the wait before the second try."""
    max_backoff_s: float = 2.0
    """The bound stops growing here."""
    multiplier: float = 2.0
    """Growth of the bound per try."""
    codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED")
    """Status codes retried: refusals, never decisions. A CANCELLED the caller caused (its deadline,
    its own cancel) is never retried by gRPC: this one is gRPC's queue ahead of the service being full."""

    def __post_init__(self) -> None:
        for name in ("first_backoff_s", "max_backoff_s"):
            if not 0.001 <= getattr(self, name) <= 3600:
                raise ValueError(f"{name}: must be within [0.001, 3600] seconds, got {getattr(self, name)}")
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts: must be within [1, {MAX_ATTEMPTS}] (gRPC's cap), got {self.attempts}")
        if not 0 < self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(f"first_backoff_s: must be > 0 and <= max_backoff_s ({self.max_backoff_s}), "
                             f"got {self.first_backoff_s}")
        # Infinite or NaN passed "at least 1" and wrote a service config that is no JSON: every call
        # then failed INVALID_ARGUMENT "Failed to create channel", as if the request were wrong.
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier: must be a finite number of at least 1, got {self.multiplier}")
        unknown = [c for c in self.codes if c not in grpc.StatusCode.__members__]
        if unknown or not self.codes:
            raise ValueError(f"codes: unknown status codes {unknown}" if unknown else "codes: must not be empty")
        decisions = [c for c in self.codes if grpc.StatusCode[c] not in RETRYABLE]
        if decisions:  # a decision retried answers the same, after the backoff: never retried (docs/API.md)
            raise ValueError(f"codes: {decisions} are decisions (or not refusals of the service), never retried; "
                             f"choose among {sorted(c.name for c in RETRYABLE)}")

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config that retries as this policy says."""
        if self.attempts == 1:
            return {"methodConfig": [{"name": [{"service": SERVICE}], "waitForReady": False}]}
        policy = {"maxAttempts": self.attempts, "initialBackoff": _seconds(self.first_backoff_s),
                  "maxBackoff": _seconds(self.max_backoff_s), "backoffMultiplier": self.multiplier,
                  "retryableStatusCodes": list(self.codes)}
        return {"methodConfig": [{"name": [{"service": SERVICE}], "waitForReady": False, "retryPolicy": policy}]}

    def channel_options(self) -> list[tuple[str, Any]]:
        # gRPC keeps a call's request to send it again only up to this size (default 256 KiB):
        # large enough for the largest message the service takes (4 MiB), or big calls go untried.
        return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(self.service_config())),
                ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES)]


def _seconds(value: float) -> str:
    """A duration as the service config's JSON wants it: decimal seconds, never an exponent."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _lines(lines: Iterable[LineLike]) -> list[pb.Line]:
    return [pb.Line(sku=s, location=loc, quantity=q) for s, loc, q in lines]


def reserve_request(reservation_id: str, lines: Iterable[LineLike], *, order_ref: str = "", channel: str = "",
                    ttl_seconds: int = 0, allow_partial: bool = False) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=reservation_id, order_ref=order_ref, channel=channel,
                             lines=_lines(lines), allow_partial=allow_partial,
                             ttl=Duration(seconds=ttl_seconds) if ttl_seconds else None)


class _Metadata:
    """Adds fixed metadata (the bearer token) to a call. grpc.aio files an interceptor under one
    kind of call only, so there is one subclass per kind (``_metadata_interceptors``)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def _with(self, d: Any) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()), *self.pairs)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


class _UnaryUnary(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with(details), request)


class _UnaryStream(_Metadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with(details), request)


class _StreamUnary(_Metadata, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with(details), requests)


class _StreamStream(_Metadata, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with(details), requests)


def _metadata_interceptors(pairs: list[tuple[str, str]]) -> list[Any]:
    return [kind(pairs) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def tls_credentials(ca: bytes | None, cert: bytes | None = None, key: bytes | None = None) -> grpc.ChannelCredentials:
    """TLS to the service: ``ca`` verifies it (None: the system roots); ``cert``/``key`` for mutual TLS, both
    or neither (``ValueError``): gRPC takes one alone here and aborts the process at the first channel built."""
    if (cert is None) != (key is None):
        raise ValueError("tls_credentials: mutual TLS needs the client certificate and its key: give both or neither")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class AtpClient:
    """One channel to one service. Use as ``async with AtpClient(target) as client``.

    ``token``: sent as ``authorization: Bearer …`` on every call (services with auth on);
    ``credentials``: TLS (``tls_credentials``), else plaintext; ``retry``: gRPC retries refusals
    (``RetryPolicy()`` is the service's published policy), else a refusal is raised at once;
    ``max_request_bytes``: a request (or ``reserve_stream`` batch) larger is refused ``InvalidRequest`` before it
    is sent — set it to the service's ``max_message_bytes`` where that is not the default (None: no bound here);
    ``max_stream_inflight``: ``reserve_stream`` batches sent and not answered, at most; ``max_batch_reservations``:
    a ``reserve_stream`` batch of more is refused ``InvalidRequest`` before it is sent (the service's, None: no bound);
    ``keepalive_s``: pings while a call is open, a ping not answered within ``keepalive_timeout_s`` ending every
    call open ``Retryable`` (UNAVAILABLE): a watch on a service gone silent ends within the two (None: no pings;
    at least 5 s for the service, which ends a connection pinged more often); ``reconnect_max_s``: the longest wait
    between attempts to connect (``RECONNECT_MAX_S``), so a service back after a restart is reached within it.
    Refusals raise a typed ``AtpError`` carrying the reason and field violations."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, options: Sequence[tuple[str, Any]] = (),
                 token: str | None = None, credentials: grpc.ChannelCredentials | None = None,
                 retry: RetryPolicy | None = None, max_request_bytes: int | None = MAX_REQUEST_BYTES,
                 max_stream_inflight: int = MAX_STREAM_INFLIGHT,
                 max_batch_reservations: int | None = MAX_BATCH_RESERVATIONS,
                 keepalive_s: float | None = KEEPALIVE_S, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        if max_request_bytes is not None and max_request_bytes < 1:
            raise ValueError(f"max_request_bytes: must be at least 1 (None: no bound), got {max_request_bytes}")
        if max_stream_inflight < 1:
            raise ValueError(f"max_stream_inflight: must be at least 1, got {max_stream_inflight}")
        if max_batch_reservations is not None and max_batch_reservations < 1:
            raise ValueError("max_batch_reservations: must be at least 1 (None: no bound), "
                             f"got {max_batch_reservations}")
        for name, value in (("keepalive_s", keepalive_s), ("keepalive_timeout_s", keepalive_timeout_s)):
            if value is not None and not (math.isfinite(value) and 0.001 <= value <= MAX_KEEPALIVE_S):
                raise ValueError(f"{name}: must be at least 0.001 and at most {MAX_KEEPALIVE_S:g} seconds "
                                 f"(keepalive_s None: no pings), got {value}")
        self.target = target
        self.timeout_s = checked_timeout(timeout_s)
        self.retry = retry
        self.max_request_bytes = max_request_bytes
        self.max_stream_inflight = max_stream_inflight
        self.max_batch_reservations = max_batch_reservations
        given = {key for key, _ in options}
        self.pinging = keepalive_s is not None or "grpc.keepalive_time_ms" in given
        """Whether the channel pings while a call is open (``keepalive_s``, or the caller's own option)."""
        ours = [(RECEIVE_KEY, MAX_ANSWER_BYTES), *reconnect_options(reconnect_max_s, options),
                *(keepalive_options(keepalive_s, keepalive_timeout_s) if keepalive_s is not None else ())]
        options = [*(o for o in ours if o[0] not in given), *options, *(retry.channel_options() if retry else ())]
        interceptors = _metadata_interceptors([("authorization", f"Bearer {token}")]) if token else None
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(target, credentials, options=list(options),
                                                   interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
        self.stub: Any = pb_grpc.AvailabilityServiceStub(self.channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> AtpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def reserve(self, reservation_id: str, lines: Iterable[LineLike], *, order_ref: str = "",
                      channel: str = "", ttl_seconds: int = 0, allow_partial: bool = False) -> pb.ReserveResponse:
        req = reserve_request(reservation_id, lines, order_ref=order_ref, channel=channel, ttl_seconds=ttl_seconds,
                              allow_partial=allow_partial)
        resp: pb.ReserveResponse = await self._call(self.stub.Reserve, req)
        return resp

    async def confirm(self, reservation_id: str) -> pb.Reservation:
        return await self._reservation(self.stub.Confirm, pb.ConfirmRequest(reservation_id=reservation_id))

    async def release(self, reservation_id: str, lines: Iterable[LineLike] = (),
                      operation_id: str = "") -> pb.Reservation:
        req = pb.ReleaseRequest(reservation_id=reservation_id, lines=_lines(lines), operation_id=operation_id)
        return await self._reservation(self.stub.Release, req)

    async def fulfill(self, reservation_id: str, lines: Iterable[LineLike] = (),
                      operation_id: str = "") -> pb.Reservation:
        req = pb.FulfillRequest(reservation_id=reservation_id, lines=_lines(lines), operation_id=operation_id)
        return await self._reservation(self.stub.Fulfill, req)

    async def get_reservation(self, reservation_id: str) -> pb.Reservation:
        req = pb.GetReservationRequest(reservation_id=reservation_id)
        return await self._reservation(self.stub.GetReservation, req)

    async def _reservation(self, method: Any, req: Any) -> pb.Reservation:
        reservation: pb.Reservation = (await self._call(method, req)).reservation
        return reservation

    async def availability(self, keys: Iterable[tuple[str, str]]) -> list[pb.Availability]:
        req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location=loc) for s, loc in keys])
        return list((await self._call(self.stub.GetAvailability, req)).positions)

    async def record_events(self, facts: Iterable[pb.Fact]) -> list[pb.FactResult]:
        req = pb.RecordEventsRequest(events=list(facts))
        return list((await self._call(self.stub.RecordEvents, req)).results)

    async def load_counts(self, request: pb.LoadCountsRequest) -> pb.LoadCountsResponse:
        """A block of ERP counts in columns (``atpctl stock load`` builds them from a CSV)."""
        answer: pb.LoadCountsResponse = await self._call(self.stub.LoadCounts, request)
        return answer

    async def _call(self, method: Any, req: Any, metadata: Sequence[tuple[str, str]] = (),
                    timeout_s: float | None = None) -> Any:
        """One unary call within ``timeout_s`` (gRPC's retries included; the client's own unless
        given), with ``metadata`` besides the token. A refusal raises a typed ``AtpError`` (a
        ``grpc.aio.AioRpcError``) carrying its reason; a request past ``max_request_bytes`` is not sent."""
        if self.max_request_bytes is not None and (size := req.ByteSize()) > self.max_request_bytes:
            raise request_too_large(type(req).__name__, size, self.max_request_bytes)
        try:
            return await method(req, timeout=self.timeout_s if timeout_s is None else timeout_s,
                                metadata=metadata or None)
        except grpc.aio.AioRpcError as exc:
            raise typed(exc) from None

    async def reserve_stream(self, batches: Source) -> AsyncGenerator[pb.ReserveStreamResponse, None]:
        """Send batches of independent reservations; yields one result message per batch, in order.
        Closing the generator (``aclose``) ends the stream: no batch is sent after it. Should
        ``batches`` raise, the batches sent before it are answered first, then its error is raised; so
        is a batch larger than ``max_request_bytes``, or of more than ``max_batch_reservations``: not sent,
        ``InvalidRequest`` (``LIMIT_EXCEEDED``; a batch of no reservations: ``INVALID_FIELD``, ``reservations``)
        once the batches before it are answered, and no batch after it taken from ``batches``.
        No answer for ``timeout_s`` while batches wait for theirs (counted from the caller's asking for
        the next answer — not the time it spends on the last one — or from the oldest batch's send if
        later: a batch queued behind many is not cut short while the service answers the ones ahead) ends the
        stream ``Retryable`` (DEADLINE_EXCEEDED, reason ``OUTCOME_UNKNOWN``, metadata ``limit``
        ``timeout_s``): every batch not answered is in doubt, settled by a retry with the same ids
        (R5); the stream itself may last as long as the batches keep coming. Results not taken from
        this generator for the service's ``stream_stall_s`` (30 s) end the stream there:
        ``Retryable`` (UNAVAILABLE, ``OUTCOME_UNKNOWN``, metadata ``limit``), its unanswered batches
        in doubt and settled the same way. Every batch answered and none to send (``batches`` done, a batch refused
        unsent), no status for ``timeout_s`` ends the call here and the iteration normally: nothing is in doubt."""
        source = Batches(batches, self.max_request_bytes, self.max_stream_inflight, self.max_batch_reservations)
        call = self.stub.ReserveStream(source.requests())
        source.opened(call)
        try:
            async for result in source.answers(call, self.timeout_s):
                yield result
        except grpc.aio.AioRpcError as exc:  # a batch gRPC refused too large leaves those sent before it in doubt
            raise stream_cut_unread(await source.told(exc), source.unanswered) from source.failure
        finally:
            # grpc.aio goes on taking batches from the caller and sending them in a task of its
            # own until the call ends: a caller that stops reading (break, aclose, an error) would
            # have reservations made that it is never told of. Ending the call stops that task; a call
            # the service ended already is not cancelled, and its task is stopped here. One grpcio's own
            # INTERNAL ended on this side alone is cancelled in gRPC's core (``release``).
            release(call)
            source.end()
        if source.failure is not None:
            raise source.failure

    def watch(self, channel: str, *, snapshot: bool = False,
              since_version: int = 0) -> AsyncGenerator[pb.WatchAvailabilityResponse, None]:
        """Follow ``channel``'s curated availability (``WatchAvailability``): yields each message as the service
        sends it. With ``snapshot``, every published value first (``KIND_SNAPSHOT`` chunks, then
        ``KIND_SNAPSHOT_END`` with its version), then ``KIND_CHANGES``; else the changes after ``since_version``
        (0: from now), or one ``KIND_RESNAPSHOT_REQUIRED`` where they cannot all be sent (the iteration then ends).

        The arguments are checked here, before anything is sent (``watch_request``: ``InvalidRequest``,
        ``INVALID_FIELD``, the field named). A watch has no deadline: it lasts until the caller stops it.
        Closing the generator (``aclose``; ``contextlib.aclosing`` around a loop that may ``break``), or cancelling
        the task reading it, cancels the call at once; a generator dropped unclosed is closed by asyncio soon
        after. A service gone silent (paused, its packets dropped, the connection left open) is found out by
        the client's pings: the iteration ends ``Retryable`` (``UNAVAILABLE``) within ``keepalive_s`` and
        ``keepalive_timeout_s``, where it waited for ever; a client without pings (``keepalive_s=None``)
        raises ``ValueError`` here, nothing sent. Every refusal or end of the call is raised typed: ``NotFound``
        (``CHANNEL_NOT_FOUND``), ``Retryable`` (``SHUTTING_DOWN``, ``STORAGE_UNREACHABLE``, ``CAPACITY_REACHED``:
        ``max_watchers`` or ``stream_stall_s``, a connection lost): watch again from the last version read
        (``since_version``; a watch ended before its ``KIND_SNAPSHOT_END`` with ``snapshot`` again). The client's
        own ``close()`` meanwhile ends it as every call open on a closed client: ``asyncio.CancelledError``."""
        request = watch_request(channel, snapshot=snapshot, since_version=since_version)
        if not self.pinging:
            raise ValueError("keepalive_s: a watch needs the client's pings (this client has keepalive_s=None): "
                             "a service gone silent would be waited for ever")
        return watched(self.stub.WatchAvailability, request)

    async def connect(self, timeout_s: float | None = None) -> None:
        """Connect now, before a change is sent: a connection that is refused (or not made within
        ``timeout_s``, the client's own unless given) raises ``Retryable`` (UNAVAILABLE,
        ``NOT_CONNECTED``) with certainty that no call of this client was sent since it could be
        (R7: not in doubt). A call's own UNAVAILABLE cannot say so: gRPC retries a call lost
        mid-way, and the last try's "failed to connect" hides that an earlier one was sent."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        state = self.channel.get_state(try_to_connect=True)
        try:
            async with asyncio.timeout(wait_s):
                while state is not grpc.ChannelConnectivity.READY:
                    if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                        raise not_connected(self.target, f"the connection failed ({state.name})")
                    await self.channel.wait_for_state_change(state)
                    state = self.channel.get_state(try_to_connect=True)
        except TimeoutError:
            raise not_connected(self.target, f"no connection within {wait_s:g}s") from None

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the health service says SERVING (recovery done); ``TimeoutError`` after
        ``timeout_s`` — each check bounded by what is left of it, not a second of its own."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.target} not SERVING after {timeout_s}s")
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=min(1.0, left))
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
