"""Optional, sampled OpenTelemetry tracing of the gRPC edge and the shard/log path.

Off unless ``tracing_endpoint`` names an OTLP/HTTP collector. On, every call is a server span (the
instrumentation's interceptor, outermost so refusals at the door are traced too), tagged with the
refusal reason when there is one; each shard turn (``atp.shard.apply``) and each group commit to
Redis (``atp.log.append``) is a span of its own — a turn and a commit serve many calls at once, so
they are not children of any one call. Sampling is by trace id (``tracing_sample_ratio``), and a
caller's sampled ``traceparent`` is followed whatever the ratio.

Bounded: spans wait in a queue of ``MAX_QUEUED_SPANS`` and are sent by the SDK's own thread, in
batches of ``EXPORT_BATCH``; when the collector is slow or away, spans past the queue are dropped,
never the calls. The provider is this service's own, not the process-global one, so a program that
embeds the service keeps its tracing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from atp_service.app.keyspace import StartupError
from atp_service.config import ServiceConfig
from atp_service.process_metrics import installed

log = logging.getLogger(__name__)

SERVICE_NAME = "atp-service"
MAX_QUEUED_SPANS = 4096
EXPORT_BATCH = 512
EXPORT_TIMEOUT_S = 5.0
"""The default ``tracing_export_timeout_s``. A stop waits as long for the spans still queued: one
export's worth. The SDK's own shutdown waits up to 30 s, a batch after another, each up to the
export timeout when the collector hangs."""
INSTALL_HINT = "pip install 'atp-service[tracing]'"


class TracingUnavailable(StartupError):
    """``tracing_endpoint`` is set but the OpenTelemetry SDK is not installed."""


class Tracing:
    """The tracer provider, its exporter and the gRPC server interceptor of one service."""

    def __init__(self, endpoint: str, sample_ratio: float, instance: str, exporter: Any = None,
                 export_timeout_s: float = EXPORT_TIMEOUT_S) -> None:
        try:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise TracingUnavailable(f"tracing_endpoint: tracing needs OpenTelemetry ({exc.name} is missing): "
                                     f"{INSTALL_HINT}, or unset ATP_TRACING_ENDPOINT") from None
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout_s)
        resource = Resource.create({"service.name": SERVICE_NAME, "service.version": installed("atp-service"),
                                    "service.instance.id": instance})
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        self._exporter = exporter
        self.final_flush_s = export_timeout_s
        """How long a stop waits for the spans still queued: one export's worth."""
        self.flushing: threading.Thread | None = None
        """The final flush (``shutdown``), still running when the stop gave up on it."""
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=MAX_QUEUED_SPANS, max_export_batch_size=EXPORT_BATCH))
        self.tracer = self.provider.get_tracer("atp_service", installed("atp-service"))
        self._interceptor = aio_server_interceptor(tracer_provider=self.provider)  # type: ignore[no-untyped-call]
        log.info("tracing on: %.4g of traces (and every sampled caller's) to %s", sample_ratio, endpoint)

    @classmethod
    def configured(cls, config: ServiceConfig) -> Tracing | None:
        """The tracing ``config`` asks for: none unless ``tracing_endpoint`` is set."""
        if not config.tracing_endpoint:
            return None
        return cls(config.tracing_endpoint, config.tracing_sample_ratio, config.advertised,
                   export_timeout_s=config.tracing_export_timeout_s)

    def interceptor(self) -> Any:
        """The gRPC server interceptor that opens each call's span."""
        return self._interceptor

    def shutdown(self) -> None:
        """Send what is queued and stop the exporter's thread, waiting ``final_flush_s`` at most: a
        collector that does not answer must not hold the service's stop (what is left is dropped)."""
        self.flushing = threading.Thread(target=self.provider.shutdown, name="tracing-shutdown", daemon=True)
        self.flushing.start()
        self.flushing.join(self.final_flush_s)
        if self.flushing.is_alive():  # a daemon thread: the process exits without it
            log.warning("tracing: spans still queued after %.0fs are dropped (the collector did not answer)",
                        self.final_flush_s)
            # Dropped means not tried: the batches left fail at once, and the thread ends with the
            # export in flight (its timeout) instead of trying each batch in turn, for a program
            # that embeds the service and goes on running.
            self._exporter.shutdown()
