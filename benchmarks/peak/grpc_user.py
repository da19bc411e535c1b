"""A locust ``User`` speaking gRPC the documented way: gevent-compatible grpc, one request event per call.

``init_gevent()`` must run after gevent's monkey patching (locust does it on import) and before
any gRPC object exists, so this module is imported by the locustfile before anything else of
the service.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User

grpc_gevent.init_gevent()

from atp_client.pb.atp.v1 import atp_pb2 as pb  # noqa: E402 - after init_gevent, by design
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc  # noqa: E402
from benchmarks.peak.book import BOOK  # noqa: E402
from benchmarks.peak.options import Run  # noqa: E402

DEADLINE_S = 5.0


class GrpcUser(User):
    """Each user has its own channel (like an OMS instance), TLS and token as the run's options say
    (``BOOK.connection``, settled when the run started); ``call`` reports to locust."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.params = Run.of(environment.parsed_options)  # not self.run: User.run runs the tasks
        self.channel = BOOK.channel()
        self.stub = pb_grpc.AvailabilityServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, name: str | None = None, outcome: Any = None) -> Any:
        """One unary call. ``outcome(response) -> str`` tags the name (e.g. Reserve[held]) so business
        results show up in the report; a gRPC error is a locust failure."""
        started = time.perf_counter()
        response, error = None, None
        try:
            response = getattr(self.stub, method)(request, timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            error = exc
        label = name or method
        if response is not None and outcome is not None:
            label = f"{label}[{outcome(response)}]"
        self.environment.events.request.fire(
            request_type="grpc", name=label, response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0, exception=error,
            context={"user": type(self).__name__},
        )
        return response


def reserve_state(response: Any) -> str:
    return "held" if response.state == pb.RESERVATION_STATE_HELD else "rejected"


__all__ = ["GrpcUser", "pb", "reserve_state"]
