"""One load generator of ``scale.py``, run in a process of its own (``multiprocessing``, spawn).

It reserves one unit of a random position per call, unary ``Reserve`` or ``ReserveStream``
batches, either routed (each call to the owner of its group) or forwarded (unary calls to a random
process, which forwards what it does not own). A warm-up first, then every generator waits at a
barrier shared with ``scale.py``, which reads the service processes' CPU from there; the window
measured starts when the barrier opens. Units acknowledged held are counted per position in both
phases: the check after the step compares them with what the service holds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from atp_client import AtpClient, AtpError, Refusal, RoutedClient, Routes, duration, place
from atp_client.pb.atp.v1 import atp_pb2 as pb

WARMUP_S = 1.0
"""Unmeasured calls before the barrier: channels connected, routes learnt, code paths warm."""
STREAMS_PER_OWNER = 2
"""ReserveStream calls a generator keeps open to each owning process."""
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
"""The reason of a refusal that may have been applied (R7, docs/API.md)."""
MESSAGES_IN_FLIGHT = 8
"""Batch messages in flight on each stream."""
TTL_S = 3600
"""Long enough that no hold expires during a run: every hold acknowledged is still held at the check."""


def sku_name(n: int) -> str:
    return f"sku-{n:05d}"


def location_name(n: int) -> str:
    return f"loc-{n:02d}"


@dataclass(frozen=True)
class LoadSpec:
    """What one generator does: ``kind`` unary or stream, ``mode`` routed or forwarded."""

    worker: int
    kind: str
    mode: str
    addresses: tuple[str, ...]
    skus: int
    locations: int
    seconds: float
    in_flight: int
    batch: int
    tag: str
    warmup_s: float = WARMUP_S


@dataclass
class Tally:
    """Answers of one generator: reservations held and latencies in the measured window; errors and
    units acknowledged per position over the whole run (the check needs every one)."""

    measuring: bool = False
    calls: int = 0
    messages: int = 0
    window_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    acked: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_doubt: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The reservation id and position (a unit) of each call that failed without a definite answer: each may have
    been held (R7), so the check allows up to these beyond ``acked``, never fewer than ``acked`` and those of them
    it reads held by id (``scale_check``: a call in doubt that landed hides no lost hold at its position). A unary
    call that failed (gRPC's retries may answer a try lost in doubt with a later try's refusal), a stream's item
    answered ``OUTCOME_UNKNOWN`` (or a status of no reason), the items outstanding on a stream that ended; not a
    stream's item the service refused for a reason of its own (``GROUP_MOVED``, ``SHARD_OVERLOADED``,
    ``INSTANCE_REPLACED``: nothing of it applied, docs/API.md)."""

    def answered(self, held: list[tuple[str, str]], started: float) -> None:
        self.acked.update(held)
        if self.measuring:
            self.calls += len(held)
            self.messages += 1
            self.latencies_ms.append((time.perf_counter() - started) * 1000)


def run_load(spec: LoadSpec, barrier: Any, results: Any) -> None:
    """The process's entry point: the tally (or the error that stopped it) onto ``results``."""
    try:
        results.put(asyncio.run(_run(spec, barrier)))
    except BaseException as exc:
        barrier.abort()  # the others and scale.py stop waiting
        results.put(f"load generator {spec.worker}: {exc!r}")


async def _run(spec: LoadSpec, barrier: Any) -> Tally:
    tally = Tally()
    rng = random.Random(spec.worker)
    phase, clients = await (_unary(spec, tally, rng) if spec.kind == "unary" else _stream(spec, tally, rng))
    try:
        await phase(spec.warmup_s)
        await asyncio.to_thread(barrier.wait)
        tally.measuring = True
        started = time.perf_counter()
        await phase(spec.seconds)
        tally.window_s = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    return tally


Phase = Callable[[float], Awaitable[None]]
Load = tuple[Phase, list[AtpClient | RoutedClient]]


async def _unary(spec: LoadSpec, tally: Tally, rng: random.Random) -> Load:
    routed = RoutedClient(spec.addresses) if spec.mode == "routed" else None
    clients = [AtpClient(address) for address in spec.addresses] if routed is None else []
    ids = iter(range(1 << 62))

    async def one() -> None:
        sku, loc = sku_name(rng.randrange(spec.skus)), location_name(rng.randrange(spec.locations))
        rid, started = f"{spec.tag}-{spec.worker}-{next(ids)}", time.perf_counter()
        client = routed or rng.choice(clients)
        try:
            answer = await client.reserve(rid, [(sku, loc, 1)], ttl_seconds=TTL_S)
        except grpc.aio.AioRpcError as exc:
            tally.errors[_kind(exc.code(), exc.reason if isinstance(exc, AtpError) else "")] += 1
            tally.in_doubt[rid] = (sku, loc)
            return
        if answer.state != pb.RESERVATION_STATE_HELD:
            tally.errors["REJECTED"] += 1
        tally.answered([(sku, loc)] if answer.state == pb.RESERVATION_STATE_HELD else [], started)

    async def phase(seconds: float) -> None:
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                await one()

        await asyncio.gather(*(loop() for _ in range(spec.in_flight)))

    return phase, [routed] if routed else list(clients)


async def _every_group_owned(addresses: Sequence[str], limit_s: float = 60.0) -> Routes:
    """The routing table once every group has an owner: a lease lost under load leaves one unowned
    until it is taken again (within a lease), and a routed stream load needs each group's owner."""
    deadline = time.monotonic() + limit_s
    async with RoutedClient(addresses) as routed:
        while True:
            routes = await routed.refresh()
            if all(routes.owners) or time.monotonic() > deadline:
                return routes
            await asyncio.sleep(0.2)


async def _stream(spec: LoadSpec, tally: Tally, rng: random.Random) -> Load:
    """Routed: each owning process gets streams of batches whose SKUs all fall in groups it owns.
    Forwarded: every process gets streams of batches over every SKU, and splits each by owner."""
    pools: dict[str, list[str]] = {}
    if spec.mode == "forwarded":
        pools = {address: [sku_name(n) for n in range(spec.skus)] for address in spec.addresses}
    else:
        routes = await _every_group_owned(spec.addresses)
        for n in range(spec.skus):
            sku = sku_name(n)
            pools.setdefault(routes.owner(place(sku, routes.shards)), []).append(sku)
    clients = {owner: AtpClient(owner) for owner in pools if owner}
    if len(clients) != len(pools):
        raise RuntimeError("a group had no owner when the stream load started")
    ids = iter(range(1 << 62))

    def batch(skus: list[str]) -> list[pb.ReserveRequest]:
        return [pb.ReserveRequest(reservation_id=f"{spec.tag}-{spec.worker}-{next(ids)}", ttl=duration(TTL_S),
                                  lines=[pb.Line(sku=rng.choice(skus), location=location_name(
                                      rng.randrange(spec.locations)), quantity=1)])
                for _ in range(spec.batch)]

    async def phase(seconds: float) -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_drive(clients[owner], pools[owner], batch, tally, stop_at)
                               for owner in clients for _ in range(STREAMS_PER_OWNER)))

    return phase, list(clients.values())


async def _drive(client: AtpClient, skus: list[str], batch: Callable[[list[str]], list[pb.ReserveRequest]],
                 tally: Tally, stop_at: float) -> None:
    """One stream: ``MESSAGES_IN_FLIGHT`` batches outstanding until ``stop_at``, then drained."""
    call = client.stub.ReserveStream()
    sent: list[tuple[float, list[pb.ReserveRequest]]] = []

    async def send() -> None:
        sent.append((time.perf_counter(), batch(skus)))
        await call.write(pb.ReserveStreamRequest(reservations=sent[-1][1]))

    try:
        for _ in range(MESSAGES_IN_FLIGHT):
            await send()
        while sent:
            result = await call.read()
            started, requests = sent.pop(0)
            tally.answered(_held(requests, result, tally), started)
            if time.perf_counter() < stop_at:
                await send()
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:  # the stream ended: every item outstanding failed with it
        tally.errors[_kind(exc.code(), "stream ended")] += sum(len(requests) for _, requests in sent)
        tally.in_doubt.update((r.reservation_id, (r.lines[0].sku, r.lines[0].location)) for _, requests in sent
                              for r in requests)


def _held(requests: list[pb.ReserveRequest], result: pb.ReserveStreamResponse, tally: Tally) -> list[tuple[str, str]]:
    """The positions of the items held; every other outcome counted as an error by its status."""
    held = []
    for request, outcome in zip(requests, result.outcomes, strict=True):
        if outcome.reservation_id != request.reservation_id:  # else its units would be counted at another position
            raise RuntimeError(f"the outcome of {outcome.reservation_id!r} in the place of {request.reservation_id!r}")
        if outcome.HasField("error"):
            refusal = Refusal.from_status(outcome.error)
            tally.errors[_kind(refusal.code, refusal.reason)] += 1
            if refusal.reason in (OUTCOME_UNKNOWN, ""):  # the service's own other refusals applied nothing of it
                tally.in_doubt[request.reservation_id] = (request.lines[0].sku, request.lines[0].location)
        elif outcome.response.state == pb.RESERVATION_STATE_HELD:
            held.append((request.lines[0].sku, request.lines[0].location))
        else:
            tally.errors["REJECTED"] += 1
    return held


def _kind(code: grpc.StatusCode, reason: str) -> str:
    """An error's name in the output: its status, and the service's reason when it gave one."""
    return f"{code.name}:{reason}" if reason else code.name
