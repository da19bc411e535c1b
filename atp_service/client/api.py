"""``AtpClient``: a small async client over grpc.aio, used by atpctl, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_service.pb.atp.v1 import atp_pb2 as pb
from atp_service.pb.atp.v1 import atp_pb2_grpc as pb_grpc

LineLike = tuple[str, str, int]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
"""Refusals, never decisions: shed load, Redis unreachable, or (CANCELLED — a client's own cancellation
raises asyncio.CancelledError instead) gRPC's bounded queue ahead of the service being full."""


@dataclass(frozen=True)
class RetryPolicy:
    """How ``AtpClient`` retries a refused call. Safe for every RPC: mutations carry their ids
    (reservation, operation, event), so a retry of one that was decided replays its answer."""

    attempts: int = 5
    """Tries in all, the first included."""
    first_backoff_s: float = 0.05
    """Bound of the wait before the second try; it doubles per try and each wait is random below
    it (full jitter), so a crowd of refused callers does not come back at once."""
    max_backoff_s: float = 2.0
    """The bound stops doubling here. All tries together stay within the client's ``timeout_s``."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be at least 1, got {self.attempts}")
        if not 0 < self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(f"first_backoff_s: must be > 0 and <= max_backoff_s ({self.max_backoff_s}), "
                             f"got {self.first_backoff_s}")


def _lines(lines: Iterable[LineLike]) -> list[pb.Line]:
    return [pb.Line(sku=s, location=loc, quantity=q) for s, loc, q in lines]


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
    """TLS to the service: ``ca`` verifies it (None: the system roots); ``cert``/``key`` for mutual TLS."""
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class AtpClient:
    """One channel to one service. Use as ``async with AtpClient(target) as client``.

    ``token``: sent as ``authorization: Bearer …`` on every call (services with auth on);
    ``credentials``: TLS (``tls_credentials``), else plaintext; ``retry``: retry refused unary
    calls (``RETRYABLE``) with backoff, else a refusal is raised at once."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, options: Sequence[tuple[str, Any]] = (),
                 token: str | None = None, credentials: grpc.ChannelCredentials | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry
        self.retried = 0
        """Tries repeated under ``retry`` so far (how often the service refused this client)."""
        self._jitter = random.Random()
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
        req = pb.ReserveRequest(reservation_id=reservation_id, order_ref=order_ref, channel=channel,
                                lines=_lines(lines), ttl_seconds=ttl_seconds, allow_partial=allow_partial)
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
        resp: pb.ReservationResponse = await self._call(method, req)
        return resp.reservation

    async def availability(self, keys: Iterable[tuple[str, str]]) -> list[pb.Availability]:
        req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location=loc) for s, loc in keys])
        return list((await self._call(self.stub.GetAvailability, req)).positions)

    async def record_events(self, facts: Iterable[pb.Fact]) -> list[pb.FactResult]:
        req = pb.RecordEventsRequest(events=list(facts))
        return list((await self._call(self.stub.RecordEvents, req)).results)

    async def _call(self, method: Any, req: Any) -> Any:
        """One unary call within ``timeout_s``; with a retry policy, refused tries are repeated."""
        policy = self.retry
        if policy is None:
            return await method(req, timeout=self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        bound = policy.first_backoff_s
        for attempt in range(1, policy.attempts + 1):
            try:
                return await method(req, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.aio.AioRpcError as exc:
                wait = self._jitter.uniform(0, bound)
                if (exc.code() not in RETRYABLE or attempt == policy.attempts
                        or time.monotonic() + wait >= deadline):
                    raise
            self.retried += 1
            await asyncio.sleep(wait)
            bound = min(bound * 2, policy.max_backoff_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def reserve_stream(
        self, batches: AsyncIterator[Sequence[pb.ReserveRequest]] | Iterable[Sequence[pb.ReserveRequest]]
    ) -> AsyncIterator[pb.ReserveBatchResult]:
        """Send batches of independent reservations; yields one result message per batch, in order."""

        async def requests() -> AsyncIterator[pb.ReserveBatch]:
            if hasattr(batches, "__aiter__"):
                async for batch in batches:
                    yield pb.ReserveBatch(reservations=batch)
            else:
                for batch in batches:
                    yield pb.ReserveBatch(reservations=batch)

        call = self.stub.ReserveStream(requests())
        async for result in call:
            yield result

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the health service says SERVING (recovery done)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target} not SERVING after {timeout_s}s")
            await asyncio.sleep(0.05)
