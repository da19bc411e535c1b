"""``RoutedClient.availability``'s keys, asked one call per group at once, answered as one call asking them all
would be: in the caller's order, and refused as the service refuses such a call (``GetAvailability``: the number
of keys first, then each key in order, before any is read)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import grpc

from atp_client._errors import FieldViolation, InvalidRequest, _status_error
from atp_client.pb.atp.v1 import atp_pb2 as pb

Read = Callable[[int | None, list[int]], Awaitable[list[pb.Availability]]]
"""One group's read: the positions of the caller's keys at ``idx``, its refusal naming them by those places."""
_PLACE = re.compile(r"^keys\[(\d+)\]")


def check_key_count(keys: int, limit: int) -> None:
    """Refuse, unsent, more ``keys`` than ``limit`` (the service's ``max_availability_keys``, as ``GetRouting`` told
    it; 0: not told, nothing refused), as the service refuses a call asking them all: split by group, each part
    could be within the limit, and the call answered where the service refuses it."""
    if limit and keys > limit:
        problem = f"{keys} keys exceed the limit max_availability_keys={limit}"
        raise InvalidRequest(_status_error(
            grpc.StatusCode.INVALID_ARGUMENT, f"keys: {problem} (the service's, told by GetRouting); not sent",
            "LIMIT_EXCEEDED", "atp.client", {"limit": "max_availability_keys"}, (FieldViolation("keys", problem),)))


async def read_groups(count: int, by_group: dict[int | None, list[int]], read: Read) -> list[pb.Availability]:
    """The positions of ``count`` keys, each group's (the caller's places ``by_group``) asked by ``read``, all at
    once; no read is left running once this returns or raises."""
    reads = {asyncio.ensure_future(read(group, idx)): idx for group, idx in by_group.items()}
    try:
        answers = await _answered(reads)
    finally:  # one refused: the others are not left running after the caller has its answer
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
    out: list[pb.Availability] = [pb.Availability()] * count
    for idx, positions in zip(reads.values(), answers, strict=True):
        for i, position in zip(idx, positions, strict=True):
            out[i] = position
    return out


async def _answered(reads: dict[asyncio.Task[list[pb.Availability]], list[int]]) -> list[list[pb.Availability]]:
    """Each read's positions, in the order of ``reads``. A key at fault is refused as the service would refuse it:
    the first in the caller's order, whichever group's read was refused first — one refused waits for the reads
    of the groups holding keys before it (each process checks its keys before it reads any, so they end as
    soon). A refusal of the call itself (``keys``: their number) comes first of all. Any other failure (a process
    not answering, access) is raised at once while no key at fault is known; once one is, it is raised whatever
    those reads end with: the service refuses the call for it, and a read not answered (its owner paused till the
    deadline) told in its place would have the caller send the refused call again."""
    pending = set(reads)
    first: tuple[int, InvalidRequest] | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failures = [error for task in sorted(done, key=lambda t: reads[t][0]) if (error := task.exception())]
        for error in failures:
            if isinstance(error, InvalidRequest) and (first is None or _first_place(error) < first[0]):
                first = (_first_place(error), error)
        if first is None and failures:
            raise failures[0]
        if first is not None:
            pending = {task for task in pending if reads[task][0] < first[0]}
    if first is not None:
        raise first[1]
    return [task.result() for task in reads]


def _first_place(error: InvalidRequest) -> int:
    """The caller's place of the first key ``error`` names (``keys[3].location``: 3); -1 where it names the keys
    as a whole (their number), or none."""
    places = [int(m[1]) for v in error.field_violations if (m := _PLACE.match(v.field))]
    return min(places, default=-1)
