"""A locust user on ``ReserveStream``: one long-lived bidirectional stream, a batch per task.

The stream answers each request message with one response message, in order, so a user keeps one
batch in flight: put it, wait for the next answer. Each batch is one request event
(``ReserveStream[batch]``, its round trip); each reservation in it is one more event of type
``grpc-item`` (``ReserveStream[held]`` / ``[rejected]`` — answers — or ``[refused]``, a failure
carrying the item's status), timed as its batch. Held reservations go in the book like the
unary users' (``benchmarks/peak/book.py``), so the end-of-run check covers them too.

A stream that breaks (the service refuses it — no token, a wrong role — restarts, or a batch
gets no answer within the deadline) counts the batch as failed and is opened again for the next.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import grpc
from gevent.queue import Queue
from locust import task

from atp_client import duration
from benchmarks.peak.book import BOOK
from benchmarks.peak.grpc_user import DEADLINE_S, GrpcUser, pb

_END = None  # put on a user's queue: its request stream ends


class BatchError(Exception):
    """A reservation of a batch refused (its ``google.rpc.Status``), or a batch without an answer."""


class StreamUser(GrpcUser):
    """Subclasses say what a reservation holds: ``lines() -> (lines, ttl_s)``."""

    abstract = True

    def on_start(self) -> None:
        self._open()

    def on_stop(self) -> None:
        self._close()
        super().on_stop()

    def lines(self) -> tuple[list[tuple[str, str, int]], int]:
        raise NotImplementedError

    def _open(self) -> None:
        self.outbox: Queue = Queue()
        requests: Iterator[Any] = iter(self.outbox.get, _END)
        self.answers: Any = self.stub.ReserveStream(requests)

    def _close(self) -> None:
        self.outbox.put(_END)
        self.answers.cancel()

    def _batch(self) -> list[Any]:
        batch = []
        for _ in range(self.params.stream_batch):
            rid = f"{BOOK.run}-s-{uuid.uuid4().hex[:16]}"
            lines, ttl_s = self.lines()
            batch.append(pb.ReserveRequest(reservation_id=rid, order_ref=rid, channel="web", ttl=duration(ttl_s),
                                           lines=[pb.Line(sku=s, location=loc, quantity=q) for s, loc, q in lines]))
        return batch

    @task
    def send(self) -> None:
        """One batch: its round trip, then each reservation's outcome, to locust's request events."""
        batch = self._batch()
        started = time.perf_counter()
        self.outbox.put(pb.ReserveStreamRequest(reservations=batch))
        answer, error = self._answer()
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._fire("grpc", "ReserveStream[batch]", elapsed_ms, answer.ByteSize() if answer else 0, error)
        if answer is None:
            self._close()
            self._open()  # for the next batch: this stream's state is unknown
            return
        sent = {req.reservation_id: req for req in batch}
        for outcome in answer.outcomes:
            self._outcome(outcome, elapsed_ms, sent)

    def _answer(self) -> tuple[Any, Exception | None]:
        try:
            with gevent.Timeout(DEADLINE_S, BatchError(f"no answer within {DEADLINE_S} s")):
                return next(self.answers), None
        except grpc.RpcError as exc:  # the whole stream refused or broken: its status
            return None, exc
        except StopIteration:
            return None, BatchError("the service ended the stream")
        except BatchError as exc:
            return None, exc

    def _outcome(self, outcome: Any, elapsed_ms: float, sent: dict[str, Any]) -> None:
        if outcome.WhichOneof("result") == "error":
            code = _CODES.get(outcome.error.code, grpc.StatusCode.UNKNOWN)
            error = BatchError(f"{code.name}: {outcome.error.message}")
            self._fire("grpc-item", "ReserveStream[refused]", elapsed_ms, 0, error)
        elif outcome.response.state == pb.RESERVATION_STATE_HELD:
            req = sent[outcome.reservation_id]
            BOOK.held(req.reservation_id, [(line.sku, line.location, line.quantity) for line in req.lines])
            self._fire("grpc-item", "ReserveStream[held]", elapsed_ms, outcome.ByteSize(), None)
        else:
            self._fire("grpc-item", "ReserveStream[rejected]", elapsed_ms, outcome.ByteSize(), None)

    def _fire(self, kind: str, name: str, elapsed_ms: float, size: int, error: Exception | None) -> None:
        self.environment.events.request.fire(request_type=kind, name=name, response_time=elapsed_ms,
                                             response_length=size, exception=error,
                                             context={"user": type(self).__name__})


_CODES = {code.value[0]: code for code in grpc.StatusCode}
"""google.rpc.Status carries the code as its number."""
