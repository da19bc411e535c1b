"""A tiny reference fold (E1-E3) and helpers to feed facts by gRPC or by input stream."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.intake.quarantine import WRITE_ONCE_SCRIPT
from tests.waiting import until

KINDS = ("SALE", "RETURN", "RECEIPT", "ADJUST", "COUNT")


@dataclass(frozen=True)
class F:
    event_id: str
    kind: str
    sku: str
    location: str
    quantity: int
    t: int
    source: str = "pos"

    def pb(self) -> pb.Fact:
        return pb.Fact(event_id=self.event_id, source=self.source, kind=pb.FactKind.Value(f"FACT_KIND_{self.kind}"),
                       sku=self.sku, location=self.location, quantity=self.quantity, event_time=timestamp(self.t))

    def fields(self) -> dict[str, str | int]:
        return {"event_id": self.event_id, "source": self.source, "kind": self.kind, "sku": self.sku,
                "location": self.location, "quantity": self.quantity, "event_time_ms": self.t}


def reference_on_hand(facts: list[F]) -> dict[tuple[str, str], int]:
    """E1/E2 by the book: sort by (event_time, rank, source, event_id); counts set, deltas add.
    One fact per identity: (source, event_id) at its position (E8)."""
    unique = {(f.source, f.event_id, f.sku, f.location): f for f in facts}.values()
    out: dict[tuple[str, str], int] = {}
    for f in sorted(unique, key=lambda f: (f.t, 1 if f.kind == "COUNT" else 0, f.source, f.event_id)):
        key = (f.sku, f.location)
        if f.kind == "COUNT":
            out[key] = f.quantity
        else:
            sign = -1 if f.kind == "SALE" else 1
            out[key] = out.get(key, 0) + sign * f.quantity
    return out


def random_facts(rng: random.Random, n: int, positions: int, prefix: str, t0: int) -> list[F]:
    facts = []
    for i in range(n):
        kind = rng.choice(KINDS)
        qty = rng.randint(0, 50) if kind == "COUNT" else rng.randint(1, 9)
        if kind == "ADJUST":
            qty = rng.choice((-1, 1)) * rng.randint(1, 5)
        p = rng.randrange(positions)
        t = t0 - rng.randrange(0, 3_600_000, 1000)  # many equal timestamps on purpose
        facts.append(F(f"{prefix}e{i}", kind, f"{prefix}S{p % 7}", f"L{p}", qty, t))
    return facts


def with_duplicates(rng: random.Random, facts: list[F], share: float = 0.1) -> list[F]:
    return facts + rng.sample(facts, int(len(facts) * share))


async def send_grpc(client: AtpClient, facts: list[F], rng: random.Random) -> None:
    i = 0
    while i < len(facts):
        size = rng.randint(1, 400)
        results = await client.record_events([f.pb() for f in facts[i:i + size]])
        assert all(r.outcome != pb.FACT_OUTCOME_INVALID for r in results), results
        i += size


async def send_stream(redis_url: str, stream: str, facts: Sequence[F], together: bool = False) -> None:
    """``facts`` written to ``stream`` in one round trip; ``together``: in one transaction too, so that no reader's
    read comes between them and one read (of as many entries) delivers them all."""
    r = aioredis.Redis.from_url(redis_url)
    async with r.pipeline(transaction=together) as pipe:
        for f in facts:
            pipe.xadd(stream, f.fields())
        await pipe.execute()
    await r.aclose()


async def wait_consumed(redis_url: str, streams: list[str], group: str = "atp", timeout_s: float = 30) -> None:
    """Until every entry of the streams was delivered to the group and acknowledged."""
    r = aioredis.Redis.from_url(redis_url)

    async def consumed(stream: str) -> bool:
        g = {g["name"].decode(): g for g in await r.xinfo_groups(stream)}.get(group)
        return g is not None and not g["pending"] and not g.get("lag", 1)

    async def all_consumed() -> bool:
        return all([await consumed(stream) for stream in streams])

    try:
        await until(all_consumed, f"{streams} consumed by {group}", timeout_s, every_s=0.05)
    finally:
        await r.aclose()


async def consumed_from_one_read(redis_url: str, stream: str, facts: Sequence[F]) -> None:
    """``facts`` written to ``stream`` together (one read delivers them all), then waited for until consumed."""
    await send_stream(redis_url, stream, facts, together=True)
    await wait_consumed(redis_url, [stream])


def dead_lettered(service: Any, stream: str) -> float:
    """``atp_dead_lettered_total`` of ``stream`` on an in-process service: counted once the script that wrote
    the dead letter and acknowledged its entry answered, so a turn or more after ``wait_consumed`` returns."""
    return service.metrics.registry.get_sample_value("atp_dead_lettered_total", {"stream": stream}) or 0.0


async def on_hand_of(client: AtpClient, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    out = {}
    for i in range(0, len(keys), 1000):
        for p in await client.availability(keys[i:i + 1000]):
            out[(p.sku, p.location)] = p.on_hand
    return out


def held_script(client: Any) -> bytes:
    """What a ``HoldingProxy`` holds to catch the quarantine script's calls (``quarantine.WRITE_ONCE_SCRIPT``,
    sent as ``EVALSHA`` by its digest): the digest, the script loaded first on ``client``'s Redis (a sync
    client) so that a call landed late runs it, not NOSCRIPT."""
    client.script_load(WRITE_ONCE_SCRIPT.body)
    return WRITE_ONCE_SCRIPT.sha.encode()


def unfulfilled_told(service: Any, reason: str, origin: str = "grpc") -> float:
    """``atp_shipments_unfulfilled_total`` of ``origin`` and ``reason`` on an in-process service (0: none yet)."""
    labels = {"origin": origin, "reason": reason}
    return service.metrics.registry.get_sample_value("atp_shipments_unfulfilled_total", labels) or 0.0
