"""The wrapper of every unary method of the servicer (``servicer.py``): its latency by method and
code, a refusal (``DomainError``) answered as its gRPC status, a call of another process's group
forwarded there (``Forwarder``), the drain and the loop-lag shedding at the door."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc

from atp_service.edge.errors import abort, status_of
from atp_service.edge.fits import too_large
from atp_service.edge.forward import Relayed
from atp_service.traces import tag_current
from reservation import DomainError, Moved, Reason, ResourceExhausted

Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def observed(method: str, answer: Callable[[Any], Any] | None = None) -> Callable[[Handler], Handler]:
    """Latency by method and code, DomainError -> gRPC status; a call of another process's group: ``Forwarder``.
    With ``answer``, the method returns what to await instead of being a coroutine itself, and ``answer``
    makes the reply of what that gave (Reserve's: one coroutine fewer to make, enter and leave per call)."""
    ok = (method, "OK")  # the key of the answered calls' histogram child, made once
    def wrap(fn: Handler) -> Handler:
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = perf_counter()
            drain = self.drain
            try:
                if drain.closing:  # ``enter``'s refusal: its frame only while the service stops
                    drain.enter()
                drain.active += 1
                try:
                    monitor = self.monitor
                    if monitor is not None and monitor.overloaded():
                        self.metrics.shed.inc()
                        raise overloaded(monitor)
                    try:
                        result = await fn(self, request, context)
                        if answer is not None:
                            result = answer(result)
                    except Moved as moved:  # another process's group: forwarded there, or redirected
                        result = await self.forwarder.answer(method, request, context, moved)
                finally:
                    drain.active -= 1  # ``drain.leave()``, written out (every call's): a stop's wait told below
                    if drain.closing:
                        drain.left()
                size = result.ByteSize()  # gRPC would refuse to send it, with no reason (a change made: R7)
                if size > self.max_message_bytes:
                    raise too_large(method, size, self.max_message_bytes)
            except Relayed as relayed:
                self.latency(method, relayed.code.name).observe(perf_counter() - started)
                await relayed.abort(context)
            except DomainError as exc:
                self.latency(method, status_of(exc).name).observe(perf_counter() - started)
                tag_current(self.tracer, reason=exc.reason.name)
                await abort(context, exc)
            except asyncio.CancelledError:  # its caller gone or its deadline passed: its work goes on (R8)
                self.latency(method, gone(context)).observe(perf_counter() - started)
                raise
            latency, took = self._latency.get(ok) or self.latency(*ok), perf_counter() - started  # no frame once made
            latency.sum += took  # ``latency.observe(took)``, written out (every call's): ``took`` is never NaN
            latency.counts[bisect_left(latency.bounds, took)] += 1
            return result

        handler.__name__ = fn.__name__
        return handler

    return wrap


def overloaded(monitor: Any) -> ResourceExhausted:
    """The refusal at the door while the event loop runs late (``LoopLagMonitor``)."""
    return ResourceExhausted(f"service overloaded: event loop {monitor.lag_s * 1000:.0f} ms late (limit "
                             f"max_loop_lag_ms={monitor.limit_s * 1000:.0f}), retry with backoff",
                             Reason.SERVICE_OVERLOADED)


def gone(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """How a call gRPC cancelled ended for its caller: ``DEADLINE_EXCEEDED`` once its deadline has passed, else
    ``CANCELLED`` (the caller cancelled or went away, or the stop cut it past its grace). Counted in
    ``atp_rpc_duration_seconds`` as any other end: left out, the calls that waited longest never showed in the
    latency (ATPReserveSlow stayed quiet while every caller with a deadline under its bound gave up)."""
    left = context.time_remaining()
    return "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"
