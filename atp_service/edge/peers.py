"""The service processes of one keyspace calling each other for an order's steps on groups they own
(``engine.parts``): ``atp.internal.v1.Peers/Step``, bytes in and out (msgspec), between processes of
one version. Not part of the public API; a caller needs the ``peer`` role where auth is on."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import msgspec

from atp_service.edge.calls import CallBook
from atp_service.edge.forward import Forwarder
from atp_service.edge.owner_watch import OwnerLost
from atp_service.edge.ratelog import OncePerKey
from atp_service.edge.record import REFUSAL_LOG_S
from atp_service.engine.parts import STEP_METHOD, Remote, serve_part, step_said
from atp_service.engine.router import Engine
from atp_service.intake.owners import MAX_FAILING_OWNERS
from reservation import Reason, Unavailable

log = logging.getLogger(__name__)
SERVICE = STEP_METHOD.strip("/").partition("/")[0]
STEP_TIMEOUT_S = 5.0
"""How long a step sent to a peer may take before its fate counts as unknown (the saga takes it
again later: every step is idempotent)."""
UNANSWERED_LOG_S = 60.0
"""A peer not answering order steps is said at once, then at most once in this long: housekeeping
sends each pending order's step again every pass while the order waits (``atp_orders_unsettled``)."""


def peers_handler(engine: Any, calls: CallBook) -> grpc.GenericRpcHandler[Any, Any]:
    """The ``Peers`` service of this process: ``engine()`` is the engine once recovered (None before). Its
    steps are booked in ``calls``: a stop cutting stalled calls waits for a step to its end (R8)."""

    async def step(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            call = calls.enter("Step")
        except Unavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        try:
            return await _step(request, context)
        finally:
            call.write_begun()

    async def _step(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        running: Engine | None = engine()
        if running is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "service is recovering its state")
        assert running is not None
        try:
            return await serve_part(running, request)
        except msgspec.MsgspecError as exc:  # not a step of this version: a caller's fault, not a bug here
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not an order step of this version: {exc}")
            raise AssertionError("unreachable: grpc.aio's abort raises") from None

    return grpc.method_handlers_generic_handler(SERVICE, {"Step": grpc.unary_unary_rpc_method_handler(step)})


def step_sender(forwarder: Forwarder, token: str | None) -> Remote:
    """How this process's sagas send a step to the peer owning its group."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    told = OncePerKey(REFUSAL_LOG_S, MAX_FAILING_OWNERS)  # a line per peer, not one per retried step
    denied = OncePerKey(REFUSAL_LOG_S, MAX_FAILING_OWNERS)  # a token refused: every step, every pass, until fixed
    unanswered = OncePerKey(UNANSWERED_LOG_S, MAX_FAILING_OWNERS)

    async def send(address: str, request: bytes) -> bytes:
        group = step_said(request)["group"]  # -1 (owner_watch.ANY): wherever the order is held
        try:
            with forwarder.using(address) as channel:  # not closed under the step (``edge.peer_pool``)
                stepping = channel.unary_unary(STEP_METHOD, None, None)(request, timeout=STEP_TIMEOUT_S,
                                                                       metadata=metadata)
                # Ended once the routes name another owner of its group (``edge.owner_watch``): a peer gone silent
                # with it in hand held the saga, its order's lock and its caller the whole bound for nothing.
                reply: bytes = await forwarder.owners.answer(stepping, group, address, change=True)
        except OwnerLost as lost:  # R7: it may have been made; idempotent, it is taken again at the new owner
            raise Unavailable(f"peer {address}: an order step ended, {lost.refusal.message}; the order goes on later",
                              Reason.OUTCOME_UNKNOWN) from None
        except grpc.aio.AioRpcError as exc:
            forwarder.tell_tls_refusal(address, exc)
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                if denied.due(address):
                    log.error("peer %s refused an order step: %s (set peer_token_file to the token of a caller "
                              "with the peer role)", address, exc.details())
            elif exc.code() == grpc.StatusCode.INVALID_ARGUMENT and told.due(address):
                log.error("peer %s could not read an order step (%s): processes of another version (a rolling "
                          "update between versions whose steps differ)? Orders spanning its groups stay "
                          "undecided, holding their units, until every process runs one version",
                          address, exc.details(), extra={"event": "peer_step_unreadable", "peer": address,
                                                         "error": exc.details()})
            elif exc.code() != grpc.StatusCode.INVALID_ARGUMENT and unanswered.due(address):
                _say_unanswered(address, request, exc)
            raise Unavailable(f"peer {address} did not answer an order step ({exc.code().name}: {exc.details()}); "
                              "the order goes on later", Reason.OUTCOME_UNKNOWN) from None
        except Unavailable as exc:  # no channel for it now (MAX_PEER_CHANNELS): as a peer not reached, not a
            if exc.reason is not Reason.SERVICE_OVERLOADED:  # shed that another process would read as its own
                raise
            raise Unavailable(f"peer {address}: an order step not sent ({exc.message}); the order goes on later",
                              Reason.OUTCOME_UNKNOWN) from None
        return reply

    return send


def _say_unanswered(address: str, request: bytes, exc: grpc.aio.AioRpcError) -> None:
    """A step the peer did not answer (its deadline passed, the peer unreachable, an error there): the
    order is left as it was; a change to it stays pending, holding its units, and housekeeping sends the
    step again every pass."""
    fields = step_said(request)
    log.warning("peer %s did not answer an order step (%s on group %d, %s): %s %s; the order is left as it was (a "
                "change to it stays pending, atp_orders_unsettled, its step sent again); is that process paused, or "
                "cut off from this one?",
                address, fields["step"], fields["group"], fields["reservation_id"], exc.code().name, exc.details(),
                extra={"event": "peer_step_failed", "peer": address, "code": exc.code().name,
                       "error": exc.details(), **fields})
