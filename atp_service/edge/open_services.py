"""The open services (no token needed): ``grpc.health.v1.Health`` and reflection, whose streams end at a stop.

The drain ends the service's own streams at a stop (``drain.py``), but a ``Health/Watch`` (gRPC's
client-side health checking keeps one open per channel) or a reflection stream a tool keeps open
never ends by itself: gRPC's stop waited for it the whole grace period (``ATP_SHUTDOWN_GRACE_S``),
then cut it off — every stop of an instance some client health-checked took the whole grace. Here a
watch is told the stop's ``NOT_SERVING`` (its last status), then ends UNAVAILABLE ``SHUTTING_DOWN``,
as a ``WatchAvailability`` does; a reflection stream stops reading, answers what it read and ends so.
A watch begun during the stop is refused so at once, without a status, as any new call then: one
that ended after a status, gRPC's client-side health checking starts again at once, not after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from atp_service.edge.drain import SHUTTING_DOWN, Drain
from atp_service.edge.errors import abort
from reservation import InvalidArgument, Limits, Reason, Unavailable, check_id

Context = grpc.aio.ServicerContext[Any, Any]
HealthResponse = health_pb2.HealthCheckResponse


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health has no types
    """Answers as grpc_health's asyncio servicer does (``set``, ``enter_graceful_shutdown``: every
    status NOT_SERVING for good), except that each ``Watch`` ends once the stop's status is sent
    (one begun during the stop: at once, without a status)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        """``max_id_length`` bounds the service name a ``Watch`` keeps for its life (an open service: any
        caller may open up to ``max_open_service_streams`` of them, each name up to ``max_message_bytes``)."""
        self._status: dict[str, int] = {"": HealthResponse.SERVING}
        self._changed = asyncio.Event()
        self.stopping = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> Any:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND)
        return HealthResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        if self.stopping:
            # Refused without a status, as any new call during a stop (drain.py): gRPC's client-side
            # health checking starts a watch again at once when it ended after a status, after a
            # backoff when it ended without one. Answered NOT_SERVING and ended, each channel's watch
            # came straight back, hundreds of times a second, for as long as the stop lasted.
            await abort(context, Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN))
        try:
            check_id("service", request.service, self._limits, required=False)
        except InvalidArgument as exc:
            await abort(context, exc)
        last = None
        while True:
            changed = self._changed  # taken before the status is read: a change after it wakes this watch
            status = self._status.get(request.service, HealthResponse.SERVICE_UNKNOWN)
            if status != last:
                await context.write(HealthResponse(status=status))
                last = status
                continue  # read again: it may have changed during the write (the stop's NOT_SERVING)
            if self.stopping:  # its last status sent: a stop waits for no watch (drain.py)
                await abort(context, Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN))
            await changed.wait()

    async def set(self, service: str, status: int) -> None:
        """``service``'s status from now on; ignored once stopping (the stop's NOT_SERVING stands)."""
        if not self.stopping:
            self._status[service] = status
            self._wake()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; each watch sends it, then ends."""
        if not self.stopping:
            self.stopping = True
            self._status = dict.fromkeys(self._status, HealthResponse.NOT_SERVING)
            self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Reflection(ReflectionServicer):  # type: ignore[misc]  # grpc_reflection has no types
    """grpc_reflection's asyncio servicer, whose streams stop reading at a stop (``drain``)."""

    def __init__(self, names: Sequence[str], drain: Drain) -> None:
        super().__init__(names)
        self._drain = drain

    async def ServerReflectionInfo(self, request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
                                   context: Context) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async with contextlib.aclosing(self._drain.until_closed(request_iterator)) as requests, \
                contextlib.aclosing(super().ServerReflectionInfo(requests, context)) as replies:
            async for reply in replies:
                yield reply
        if self._drain.closing:  # the caller resumes with another instance, or this one restarted
            await abort(context, Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN))
