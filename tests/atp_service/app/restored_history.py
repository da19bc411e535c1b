"""A varied history driven through a real service, and every answer it gives to reads and retries recorded,
so a restored instance can be asked the same and compared field by field (R5: a live and a restored instance
answer alike within the retention window)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.json_format import MessageToDict

from atp_client import AtpClient, AtpError, timestamp, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.waiting import until

Call = Callable[[AtpClient], Awaitable[Any]]
T = 1_700_000_000_000

POSITIONS = [(sku, loc) for sku in ("sku-a", "sku-b", "sku-c", "sku-d", "sku-e")
             for loc in ("dc-1", "store-1", "store-2", "store-3")]


def fact(event_id: str, kind: str, sku: str, location: str, quantity: int, t: int, rid: str = "",
         source: str = "pos") -> pb.Fact:
    return pb.Fact(event_id=event_id, source=source, kind=pb.FactKind.Value(f"FACT_KIND_{kind}"), sku=sku,
                   location=location, quantity=quantity, event_time=timestamp(t), reservation_id=rid)


def answer_of(value: Any) -> Any:
    """An answer as plain data: a message's fields, a list of them, or a refusal's every detail."""
    if isinstance(value, list):
        return [answer_of(v) for v in value]
    if hasattr(value, "DESCRIPTOR"):
        return MessageToDict(value, preserving_proto_field_name=True)
    return value


def without_clock(value: Any) -> Any:
    """``value`` with the service clock a refusal of a fact from the future names left out."""
    return json.loads(re.sub(r"service clock \(\d+\)", "service clock", json.dumps(value)))


async def ask(client: AtpClient, call: Call) -> Any:
    try:
        return without_clock(answer_of(await call(client)))
    except grpc.aio.AioRpcError as exc:
        r = (exc if isinstance(exc, AtpError) else typed(exc)).refusal
        return ["refused", r.code.name, r.reason, sorted(r.metadata.items()),
                [(v.field, v.description) for v in r.field_violations], r.state, r.message]


def safety(sku: str, loc: str, qty: int) -> Call:
    return lambda c: c.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku=sku, location=loc, quantity=qty))


def reserve(rid: str, lines: list[tuple[str, str, int]], **kw: Any) -> Call:
    return lambda c: c.reserve(rid, lines, **kw)


def step(kind: str, rid: str, lines: list[tuple[str, str, int]] | None = None, op: str = "") -> Call:
    if kind == "confirm":
        return lambda c: c.confirm(rid)
    method = {"release": "release", "fulfill": "fulfill"}[kind]
    return lambda c: getattr(c, method)(rid, lines or (), operation_id=op)


def record(facts: list[pb.Fact]) -> Call:
    return lambda c: c.record_events(facts)


STOCK = [fact(f"c-{s}-{loc}", "COUNT", s, loc, 10, T - 60_000) for s, loc in POSITIONS]

HISTORY: list[tuple[str, Call]] = [
    ("stock", record(STOCK)),
    ("ss-a", safety("sku-a", "dc-1", 2)),
    ("r-one", reserve("r-one", [("sku-a", "dc-1", 3)], channel="web", ttl_seconds=600)),
    ("r-across", reserve("r-across", [("sku-a", "dc-1", 1), ("sku-b", "dc-1", 2), ("sku-c", "dc-1", 3),
                                      ("sku-d", "store-1", 1)], order_ref="o-1", ttl_seconds=600)),
    ("r-short", reserve("r-short", [("sku-b", "dc-1", 20)], ttl_seconds=600)),
    ("r-short-across", reserve("r-short-across", [("sku-c", "dc-1", 1), ("sku-e", "dc-1", 50)], ttl_seconds=600)),
    ("r-partial", reserve("r-partial", [("sku-c", "dc-1", 2), ("sku-d", "dc-1", 40), ("sku-e", "dc-1", 4)],
                          allow_partial=True, ttl_seconds=600)),
    ("r-partial-none", reserve("r-partial-none", [("sku-d", "dc-1", 40), ("sku-e", "dc-1", 40)],
                               allow_partial=True, ttl_seconds=600)),
    ("r-bad", reserve("r-bad", [("sku-a", "dc-1", 0)], ttl_seconds=600)),
    ("r-bad-ttl", reserve("r-bad-ttl", [("sku-a", "dc-1", 1)], ttl_seconds=10 ** 9)),
    ("r-group", reserve("r-group", [("sku-a", "north-first", 14)], channel="web", ttl_seconds=600)),
    ("r-group-across", reserve("r-group-across", [("sku-b", "stores", 3), ("sku-c", "north-first", 2),
                                                  ("sku-e", "dc-1", 1)], channel="pickup", ttl_seconds=600)),
    ("r-ttl", reserve("r-ttl", [("sku-b", "dc-1", 1), ("sku-d", "dc-1", 1)], ttl_seconds=5)),
    ("r-ttl-one", reserve("r-ttl-one", [("sku-e", "store-2", 2)], ttl_seconds=5)),
    ("confirm-one", step("confirm", "r-one")),
    ("confirm-across", step("confirm", "r-across")),
    ("fulfil-line", step("fulfill", "r-across", [("sku-b", "dc-1", 1)], "op-f1")),
    ("release-line", step("release", "r-across", [("sku-c", "dc-1", 2)], "op-r1")),
    ("release-partial", step("release", "r-partial")),
    ("confirm-group", step("confirm", "r-group")),
    ("fulfil-group", step("fulfill", "r-group")),
    ("release-group-line", step("release", "r-group-across", [("sku-b", "store-1", 1)], "op-r2")),
    ("confirm-short", step("confirm", "r-short")),
    ("confirm-unknown", step("confirm", "r-never")),
    ("fulfil-held", step("fulfill", "r-group-across")),
    ("facts", record([fact("s1", "SALE", "sku-a", "dc-1", 1, T + 1000),
                      fact("s1", "SALE", "sku-a", "dc-1", 1, T + 1000),  # a duplicate (E8)
                      fact("s2", "SALE", "sku-b", "dc-1", 1, T + 1000),
                      fact("s2", "SALE", "sku-b", "dc-1", 2, T + 1000),  # a conflict (E8)
                      fact("late", "RECEIPT", "sku-c", "dc-1", 5, T - 120_000),
                      fact("adj", "ADJUST", "sku-d", "dc-1", -3, T + 2000),
                      fact("cnt", "COUNT", "sku-e", "dc-1", 30, T + 3000),
                      fact("old-cnt", "COUNT", "sku-e", "dc-1", 99, T + 2500),
                      fact("ship-1", "SHIPMENT", "sku-a", "dc-1", 3, T + 4000, "r-one"),
                      fact("ship-2", "SHIPMENT", "sku-d", "store-1", 1, T + 4000, "r-across"),
                      fact("ship-3", "SHIPMENT", "sku-b", "dc-1", 1, T + 4000, "r-ttl"),
                      fact("future", "RECEIPT", "sku-a", "dc-1", 1, T + 3_600_000)])),
    ("ss-e", safety("sku-e", "store-2", 3)),
    ("ss-bad", safety("sku-e", "store-2", -1)),
    ("release-across", step("release", "r-across")),
    ("r-keep", reserve("r-keep", [("sku-c", "store-3", 5), ("sku-d", "store-3", 5), ("sku-a", "store-3", 2)],
                       ttl_seconds=600, order_ref="keep")),
    ("r-keep-held-op", step("release", "r-keep", [("sku-a", "store-3", 1)], "op-h1")),
    ("confirm-keep", step("confirm", "r-keep")),
    ("release-keep-op", step("release", "r-keep", [("sku-c", "store-3", 1)], "op-k1")),
    ("fulfil-keep-op", step("fulfill", "r-keep", [("sku-d", "store-3", 1)], "op-k2")),
    ("late-fact", record([fact("way-back", "RECEIPT", "sku-c", "store-3", 4, T - 25 * 3600 * 1000),
                          fact("recent", "RECEIPT", "sku-c", "store-3", 4, T + 5000, source="wms")])),
    ("r-dup", reserve("r-dup", [("sku-b", "store-2", 1), ("sku-b", "store-2", 2), ("sku-c", "north-first", 2),
                                ("sku-c", "store-2", 1)], channel="web", ttl_seconds=600)),
    ("r-dup-partial", reserve("r-dup-partial", [("sku-b", "store-3", 6), ("sku-b", "store-3", 6),
                                                ("sku-a", "store-3", 1)], allow_partial=True, ttl_seconds=600)),
    ("r-no-channel", reserve("r-no-channel", [("sku-b", "stores", 1)], channel="nope", ttl_seconds=600)),
    ("r-nowhere", reserve("r-nowhere", [("sku-b", "nowhere", 1), ("sku-z", "dc-1", 1)], ttl_seconds=600)),
    ("release-dup-op", step("release", "r-dup", [("sku-b", "store-2", 2)], "op-d1")),
    ("r-ttl-group", reserve("r-ttl-group", [("sku-e", "north-first", 3), ("sku-b", "dc-1", 1)], channel="web",
                            ttl_seconds=7)),
]


class World(Protocol):
    """A service under test: its client now, its clock, and a restart (a clean stop or a crash)."""

    client: AtpClient
    clock: ManualClock

    async def restart(self) -> None: ...


async def expire_short_holds(world: World) -> None:
    world.clock.advance(10_000)

    async def expired() -> bool:
        states = [(await world.client.get_reservation(rid)).state for rid in ("r-ttl", "r-ttl-one", "r-ttl-group")]
        return pb.RESERVATION_STATE_HELD not in states
    await until(expired, "the short holds expired")


AFTER_EXPIRY: list[tuple[str, Call]] = [
    ("confirm-expired", step("confirm", "r-ttl")),
    ("release-expired", step("release", "r-ttl-one")),
    ("r-after", reserve("r-after", [("sku-b", "dc-1", 1), ("sku-e", "store-2", 1)], ttl_seconds=600)),
]

IDS = sorted({"r-dup", "r-dup-partial", "r-no-channel", "r-nowhere", "r-keep", "r-ttl-group", "r-one", "r-across",
              "r-short", "r-short-across", "r-partial", "r-partial-none", "r-bad", "r-bad-ttl", "r-group",
              "r-group-across", "r-ttl", "r-ttl-one", "r-never", "r-after"})

OTHER_CONTENT: list[tuple[str, Call]] = [
    ("oc-ref", reserve("r-one", [("sku-a", "dc-1", 3)], channel="web", ttl_seconds=600, order_ref="x")),
    ("oc-channel", reserve("r-one", [("sku-a", "dc-1", 3)], channel="pickup", ttl_seconds=600)),
    ("oc-lines", reserve("r-across", [("sku-a", "dc-1", 1)], order_ref="o-1", ttl_seconds=600)),
    ("oc-ttl", reserve("r-short", [("sku-b", "dc-1", 20)], ttl_seconds=601)),
    ("oc-partial", reserve("r-partial", [("sku-c", "dc-1", 2), ("sku-d", "dc-1", 40), ("sku-e", "dc-1", 4)],
                           ttl_seconds=600)),
    ("oc-expired", reserve("r-ttl", [("sku-b", "dc-1", 2), ("sku-d", "dc-1", 1)], ttl_seconds=5)),
    ("oc-release-op", step("release", "r-across", [("sku-a", "dc-1", 1)], "op-r1")),
    ("oc-fulfil-op", step("fulfill", "r-across", [("sku-b", "dc-1", 2)], "op-f1")),
    ("oc-keep-op", step("fulfill", "r-keep", [("sku-d", "store-3", 2)], "op-k2")),
    ("oc-keep-op-kind", step("release", "r-keep", [("sku-d", "store-3", 1)], "op-k2")),
]


async def drive(world: World, restart_after: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The history run once, the service restarted after each step named in ``restart_after``: each step's
    first answer."""
    first: dict[str, Any] = {}
    for name, call in HISTORY + AFTER_EXPIRY:
        if name == "confirm-expired":
            await expire_short_holds(world)
        first[name] = await ask(world.client, call)
        world.clock.advance(100)
        if name in restart_after:
            await world.restart()
    return first


async def answers(client: AtpClient) -> dict[str, Any]:
    """Every read and every retry (same content, then other content) the history allows."""
    out: dict[str, Any] = {f"get {rid}": await ask(client, lambda c, rid=rid: c.get_reservation(rid)) for rid in IDS}
    out["availability"] = await ask(client, lambda c: c.availability(POSITIONS))
    for name, call in HISTORY + AFTER_EXPIRY + OTHER_CONTENT:
        out[f"retry {name}"] = await ask(client, call)
    return out


RESOLVED = (pb.RESERVATION_STATE_FULFILLED, pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_EXPIRED,
            pb.RESERVATION_STATE_REJECTED)


async def expired_due(world: World, ids: list[str], retention_ms: int | None = None) -> None:
    """Every hold whose TTL the clock has passed expired, and every resolved reservation past
    ``retention_ms`` forgotten (housekeeping's work), before the next step."""
    now = world.clock.now_ms()

    async def none_due() -> bool:
        for rid in ids:
            try:
                rec = await world.client.get_reservation(rid)
            except grpc.aio.AioRpcError:
                continue
            if rec.state == pb.RESERVATION_STATE_HELD and rec.expire_time.ToMilliseconds() <= now:
                return False
            if (retention_ms is not None and rec.state in RESOLVED
                    and rec.update_time.ToMilliseconds() < now - retention_ms):
                return False
        return True
    await until(none_due, "the holds due expired")


async def published(world: World, desk: Any, ids: list[str], retention_ms: int | None = None) -> dict[str, Any]:
    """Every channel's published values (a watch's snapshot), once every change is published: the clock moved
    past every throttle interval and rate limit (the holds it made due expired first)."""
    for _ in range(4):  # as many each time, so that two runs expire the same holds (the last round: none)
        world.clock.advance(2_000)
        await expired_due(world, ids, retention_ms)
        desk.poke()
        await until(lambda: not desk._dirty and all(f.in_flight == 0 for f in desk.feeds.values()),
                    "the changes curated and written")
    await until(lambda: not desk._dirty and all(f.pending == 0 and f.in_flight == 0 for f in desk.feeds.values()),
                "every change published")
    out: dict[str, Any] = {}
    for channel in sorted(desk.feeds):
        values = []
        async for message in world.client.watch(channel, snapshot=True):
            values += [(u.sku, u.location, u.quantity, u.status) for u in message.updates]
            if message.kind == pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
                break
        out[f"channel {channel}"] = sorted(values)
    return out
