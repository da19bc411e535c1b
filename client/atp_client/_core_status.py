"""A stream call's status where grpcio's asyncio client set its own ``INTERNAL`` "Internal error from Core"
(``CORE_LOST_CALL``: a write failing, grpc/grpc#36066) over the service's, or before it: the service's status told in
its place (``KeptStatus``), and the call ended in gRPC's core for good (``release``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import grpc

from atp_client._errors import CORE_LOST_CALL

_LOGGER = logging.getLogger(__name__)

CORE_STATUS_WAIT_S = 1.0
"""How long a stream ended by grpcio's own ``INTERNAL`` waits for the status set over it (``KeptStatus.told``): gRPC's
core tells every call it ends its status, some milliseconds after that ``INTERNAL`` at most, as seen."""
_SET_OVER_PAUSE_S = 0.02
"""The longest pause between two looks at a call's status while waiting for the one set over grpcio's own."""
RELEASED_DETAILS = "Released by the client: grpcio's own INTERNAL had ended the call on the client's side alone"
"""The details of the cancellation ``release`` sends a call grpcio had ended with its own ``INTERNAL``."""
_RELEASE_WARNED: set[str] = set()
"""What ``release`` has logged (once a process, ``_warn_once``): this grpcio lets it not end a call in gRPC's core."""


class KeptStatus:
    """The first status of a call that is not grpcio's own ``INTERNAL`` (``note``, its done callback), and the one
    to tell in place of that ``INTERNAL`` (``told``)."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: grpc.aio.AioRpcError | None = None

    def note(self, call: Any) -> None:
        """Keeps ``call``'s status if grpcio did not make it up. grpcio runs a call's done callbacks once, at the first
        status it sets (a later one, set over it, runs none): the service's status, then grpcio's ``INTERNAL``
        ``CORE_LOST_CALL`` set over it by a write failing on the call already over — the caller reads only the last.
        Never raises: grpcio runs this inside the setting of the status (``call.cancel()`` among them), an exception
        out of it raised there, before gRPC's core is told."""
        if self.status is not None:
            return
        try:
            status = _status_now(call)
        except RuntimeError as exc:  # a grpcio whose accessors wait: its own INTERNAL is told as it is
            _LOGGER.warning("ReserveStream: %s", exc)
            return
        if not lost_in_core(status):
            self.status = status

    async def told(self, call: Any | None, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """``error``, the call's failure, or the status the service sent where ``error`` is grpcio's own
        ``CORE_LOST_CALL`` (grpc/grpc#36066): ``INVALID_ARGUMENT`` ``LIMIT_EXCEEDED`` (a batch past the service's
        ``max_batch_reservations``), ``SHUTTING_DOWN``, ``OUTCOME_UNKNOWN`` told ``Retryable`` ``INTERNAL`` — a
        refusal sent again for ever, a batch in doubt told a plain failure (R7). grpcio sets the two in either order:
        the service's first, its own written over it (the done callbacks ran with the service's: ``status``); or its
        own first (the callbacks ran with it, and run no more), the service's set over it up to some milliseconds
        later — waited for here on ``call`` (None: not opened), within ``CORE_STATUS_WAIT_S``."""
        if not lost_in_core(error):
            return error
        if self.status is None and call is not None:
            self.status = await _set_over(call, CORE_STATUS_WAIT_S)
        if self.status is not None and self.status.code() != grpc.StatusCode.OK:
            return self.status
        return error


def release(call: Any) -> None:
    """Ends ``call`` in gRPC's core too. ``call.cancel()`` cancels only a call not over on the client's side, and
    grpcio's own ``INTERNAL`` (``CORE_LOST_CALL``) ends it there alone: gRPC's core was never told, and the call
    stayed open on the service — a ``ReserveStream`` holding its place among ``max_reserve_streams`` until the
    service ended it, the client's channel closed or not. Cancelling a call core has ended already changes nothing
    there; the status read here after is ``CANCELLED``. Beyond ``call.cancel()`` it never raises: it runs in a
    ``finally``, where an exception would stand for the caller's own error, and what it reaches is grpcio's private
    call object (a grpcio that changed it is told once in the log, the call left as ``call.cancel()`` left it)."""
    if call.cancel():
        return
    try:
        lost = lost_in_core(_status_now(call))
    except Exception:  # a grpcio whose accessors wait, or changed: cancelled in core, no status sent
        lost = True
    if not lost:
        return
    cancel = getattr(getattr(call, "_cython_call", None), "cancel", None)  # grpc.aio's Call.cancel() refuses, this not
    if cancel is None:
        _warn_once("has no call._cython_call.cancel")
        return
    try:
        cancel(RELEASED_DETAILS)
    except Exception as exc:  # grpcio's private API changed: never in place of the caller's error
        _warn_once(f"refused call._cython_call.cancel ({type(exc).__name__}: {exc})")


def _warn_once(what: str) -> None:
    """Logs, once a process, that ``release`` cannot end a call in gRPC's core on this grpcio: every stream that
    meets grpcio's own ``INTERNAL`` would log it, the same words, as often as that happens."""
    if _RELEASE_WARNED:
        return
    _RELEASE_WARNED.add(what)
    _LOGGER.warning("ReserveStream: grpc %s %s: a call ended by grpcio's own INTERNAL stays open on the service "
                    "until it ends it", grpc.__version__, what)


def lost_in_core(error: grpc.aio.AioRpcError) -> bool:
    """Whether ``error`` is the ``INTERNAL`` grpcio's asyncio client makes up when a write fails (``CORE_LOST_CALL``),
    not a status the service sent."""
    return error.code() == grpc.StatusCode.INTERNAL and error.details() == CORE_LOST_CALL


def _status_now(call: Any) -> grpc.aio.AioRpcError:
    """``call``'s status as it is now (set: read at once, none of its accessors waits); RuntimeError where one would."""
    return grpc.aio.AioRpcError(_now(call.code()), _now(call.initial_metadata()), _now(call.trailing_metadata()),
                                _now(call.details()), _now(call.debug_error_string()))


async def _set_over(call: Any, within_s: float) -> grpc.aio.AioRpcError | None:
    """The status set over grpcio's own ``INTERNAL`` on ``call`` (over): the service's, or the connection's loss
    (``UNAVAILABLE``), which gRPC's core tells every call it ends. None where none was within ``within_s``, or it
    cannot be read. grpcio tells nobody of a status set over another (its done callbacks ran at the first): looked
    at again, each pause longer than the last, up to ``_SET_OVER_PAUSE_S``."""
    deadline, pause = time.monotonic() + within_s, 0.0
    while True:
        try:
            status = _status_now(call)
        except RuntimeError:  # a grpcio whose accessors wait
            return None
        if not lost_in_core(status):
            return status
        if (left := deadline - time.monotonic()) <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(max(2 * pause, 0.001), _SET_OVER_PAUSE_S)


def _now(accessor: Coroutine[Any, Any, Any]) -> Any:
    """The value of one of a finished call's status accessors (``code()``, ``details()``, ...): coroutines that
    return at once, the status set — read inside a done callback, before grpcio may set another over it."""
    try:
        accessor.send(None)
    except StopIteration as returned:
        return returned.value
    accessor.close()
    raise RuntimeError(f"grpc {grpc.__version__}: a finished call's status accessor waited (grpc.aio changed): "
                       "its status cannot be read in its done callback")


__all__ = ["CORE_STATUS_WAIT_S", "KeptStatus", "lost_in_core", "release"]
