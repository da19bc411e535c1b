"""The ``ReserveStream`` callers of ``fault_soak.py`` (``soak_load.py`` holds the rest of its load): streams with
their own deadline, some cancelled by the client after a write, each on the raw stub (its writes and reads as an OMS
of its own would make them), every end counted in the book."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from atp_client import KeptStatus, lost_in_core, release
from atp_client.pb.atp.v1 import atp_pb2 as pb
from benchmarks.soak_load import CODE_NAMES, ODD, Caller

CALL_ENDED: type[Exception] = cygrpc.ExecuteBatchError
"""What grpc.aio's core raises for a stream operation on a call that has just ended."""


class StreamEnded(Exception):
    """A ReserveStream ended (status OK) before answering every batch sent on it."""


async def streams(c: Caller, name: str) -> None:
    """ReserveStream calls with their own deadline (by default 50 ms - 3 s); some are cancelled by the client
    after a write, as a caller that goes away would. Holds it acknowledges go to the idle pool."""
    n = 0
    while c.going():
        n += 1
        low, high = max(0.05, c.deadlines[0]), max(3.0, c.deadlines[1])  # a stream outlives a unary call
        call = c.stub.ReserveStream(timeout=math.exp(c.rng.uniform(math.log(low), math.log(high))))
        await one_stream(c, call, f"{name}-{n}")
        await c.pause(0.05)


async def one_stream(c: Caller, call: Any, tag: str) -> None:
    """``call``'s batches, and how it ended counted. grpcio's own ``INTERNAL`` "Internal error from Core" (a write
    failing on a call already over, grpc/grpc#36066) is told as ``AtpClient.reserve_stream`` tells it: the status
    the service sent, set under it or over it (``KeptStatus``), in its place — the soak noted it as an answer the
    service should never give. The call is then ended in gRPC's core too (``release``), where grpcio's ``INTERNAL``
    ended it on this side alone: the service's side stayed open."""
    kept = KeptStatus()
    call.add_done_callback(kept.note)
    try:
        if await stream_batches(c, call, tag):  # every batch answered: the status tells how the stream ended
            await count_end(c, call, kept)
    except grpc.aio.AioRpcError as exc:
        told = await kept.told(call, exc)
        if lost_in_core(told) and kept.status is not None and kept.status.code() == grpc.StatusCode.OK:
            # grpcio's own INTERNAL over the service's OK, the stream over with batches unanswered: as the read's EOF
            ended_early(c, "the stream ended OK with batches unanswered (a write failing on it after)")
        else:
            c.book.failed("stream", told)
    except (asyncio.InvalidStateError, CALL_ENDED):
        # A write or done_writing as the call ended (its deadline, the service going away):
        # grpc.aio raises these instead of the status, which the call still holds.
        await count_end(c, call, kept)
    except StreamEnded as exc:  # OK with batches neither answered nor told in doubt: no end the service may give
        ended_early(c, str(exc))
    finally:
        release(call)


def ended_early(c: Caller, why: str) -> None:
    """A stream the service ended ``OK`` before answering every batch sent on it, counted and noted: however the
    client saw it (the read's EOF, or grpcio's own ``INTERNAL`` from a write on the call already over)."""
    c.book.calls[("stream", "ENDED_EARLY")] += 1
    c.book.odd.setdefault(("stream", "ENDED_EARLY"), why)


async def count_end(c: Caller, call: Any, kept: KeptStatus) -> None:
    """``call``'s status counted (waited for, within the call's deadline): ``OK``, or as a failed call's, an odd one
    noted as the service's answer. Read, not assumed from the answers: a stream the service ended with a fault of its
    own after its last answer, or before a write of the soak's, is no stream that ended well."""
    error = grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(), await call.trailing_metadata(),
                                 await call.details(), await call.debug_error_string())
    if error.code() == grpc.StatusCode.OK:
        c.book.calls[("stream", "OK")] += 1
    else:
        c.book.failed("stream", await kept.told(call, error))


async def stream_batches(c: Caller, call: Any, tag: str) -> bool:
    """``call``'s batches written and their answers read: True, every one answered; False, the client went away."""
    waiting: deque[list[str]] = deque()
    for b in range(c.rng.randint(1, 6)):
        batch = [c.request(f"{tag}-{b}-{i}")[1] for i in range(c.rng.randint(1, 4))]
        ids = [r.reservation_id for r in batch]
        c.book.doubt.update(ids)  # until an outcome names them
        await call.write(pb.ReserveStreamRequest(reservations=batch))
        waiting.append(ids)
        if c.rng.random() < 0.1:
            call.cancel()  # the client goes away with batches in flight
            c.book.calls[("stream", "CANCELLED_BY_CLIENT")] += 1
            return False
        if len(waiting) >= 2:
            await read_batch(c, call, waiting.popleft())
    await call.done_writing()
    while waiting:
        await read_batch(c, call, waiting.popleft())
    return True


async def read_batch(c: Caller, call: Any, ids: list[str]) -> None:
    result = await call.read()
    if not isinstance(result, pb.ReserveStreamResponse):  # grpc.aio.EOF: the stream ended, status OK
        raise StreamEnded(f"the stream ended with {len(ids)} reservations unanswered")
    for outcome in result.outcomes:
        if outcome.HasField("response"):
            c.book.calls[("stream_reserve", pb.ReservationState.Name(outcome.response.state))] += 1
            c.book.ack_reserve(outcome.response)
            c.book.doubt.discard(outcome.reservation_id)
            if outcome.response.state == pb.RESERVATION_STATE_HELD:
                c.book.idle.append(outcome.reservation_id)
        else:
            name = CODE_NAMES.get(outcome.error.code, str(outcome.error.code))
            c.book.calls[("stream_reserve", name)] += 1
            if name in {code.name for code in ODD}:
                c.book.odd.setdefault(("stream_reserve", name), outcome.error.message)
    if len(result.outcomes) != len(ids):
        c.book.calls[("stream", "SHORT_BATCH")] += 1
