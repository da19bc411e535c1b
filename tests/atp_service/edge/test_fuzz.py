"""Hostile input: every RPC and the input streams fed generated garbage (hypothesis) against the real
server and Redis. No crash, a precise error naming the field or a dead-letter entry with a reason,
and nothing half-applied (the ledgers' invariants hold afterwards).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atp_client import Refusal, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service import AtpService
from tests.conftest import ServiceFactory
from tests.sim.checks import holds_match_positions, one_state_each

EXAMPLES = 300
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*$")
INT64 = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-5, 5), st.sampled_from([0, 1, 10**6, 10**7]))
TEXT = st.one_of(st.text(max_size=20), st.text(min_size=120, max_size=300), st.sampled_from(["", " ", "\x00", "A",
                                                                                               "sku-1", "L1"]))
LINES = st.lists(st.builds(pb.Line, sku=TEXT, location=TEXT, quantity=INT64), max_size=6)
NANOS = st.integers(-10**9, 10**9)
TTL = st.one_of(st.none(), st.builds(Duration, seconds=INT64, nanos=st.one_of(st.just(0), NANOS)))
TIME = st.one_of(st.none(), st.just(timestamp(int(time.time() * 1000))),
                 st.builds(Timestamp, seconds=st.integers(-2**40, 2**40), nanos=NANOS))
RESERVE = st.builds(pb.ReserveRequest, reservation_id=TEXT, order_ref=TEXT, channel=TEXT, lines=LINES,
                    ttl=TTL, allow_partial=st.booleans())
STREAM_EXAMPLES = 60
REQUESTS: list[tuple[str, Any]] = [
    ("Reserve", RESERVE),
    ("Confirm", st.builds(pb.ConfirmRequest, reservation_id=TEXT)),
    ("Release", st.builds(pb.ReleaseRequest, reservation_id=TEXT, lines=LINES, operation_id=TEXT)),
    ("Fulfill", st.builds(pb.FulfillRequest, reservation_id=TEXT, lines=LINES, operation_id=TEXT)),
    ("GetReservation", st.builds(pb.GetReservationRequest, reservation_id=TEXT)),
    ("GetAvailability", st.builds(pb.GetAvailabilityRequest, keys=st.lists(
        st.builds(pb.PositionKey, sku=TEXT, location=TEXT), max_size=5))),
    ("RecordEvents", st.builds(pb.RecordEventsRequest, events=st.lists(st.builds(
        pb.Fact, event_id=TEXT, source=TEXT, kind=st.integers(-1, 9), sku=TEXT, location=TEXT, quantity=INT64,
        event_time=TIME, reservation_id=TEXT), max_size=5))),
    ("ExplainAvailability", st.builds(pb.ExplainAvailabilityRequest, sku=TEXT, location=TEXT)),
    ("SetSafetyStock", st.builds(pb.SetSafetyStockRequest, sku=TEXT, location=TEXT, quantity=INT64)),
]


def check_refusal(refusal: Refusal) -> None:
    """Every refusal says why in a reason code; invalid input names each field at fault as a path."""
    assert refusal.reason, refusal
    if refusal.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert refusal.reason in ("INVALID_FIELD", "LIMIT_EXCEEDED"), refusal
        assert refusal.field_violations, refusal
        assert all(FIELD_PATH.match(v.field) for v in refusal.field_violations), refusal


def fuzz_rpcs(target: str) -> int:
    """Runs in a thread with a blocking client while the server serves on the test's event loop."""
    tried = 0
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AvailabilityServiceStub(channel)  # type: ignore[no-untyped-call]

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(*(st.tuples(st.just(name), strategy) for name, strategy in REQUESTS)))
        def one(call: tuple[str, Any]) -> None:
            nonlocal tried
            tried += 1
            name, request = call
            try:
                getattr(stub, name)(request, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() in ALLOWED, (name, request, exc.code(), exc.details())
                check_refusal(Refusal.from_trailers(exc.code(), exc.details(), exc.trailing_metadata()))

        one()

        @settings(max_examples=STREAM_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(RESERVE, max_size=8), TEXT)
        def streams(batch: list[pb.ReserveRequest], channel: str) -> None:
            nonlocal tried
            tried += 1
            if not batch:  # a batch of none: the stream ends naming the field (no item to carry it)
                with pytest.raises(grpc.RpcError) as ended:
                    list(stub.ReserveStream(iter([pb.ReserveStreamRequest()]), timeout=10))
                said = Refusal.from_trailers(ended.value.code(), ended.value.details(), ended.value.trailing_metadata())
                assert (said.reason, [v.field for v in said.field_violations]) == ("INVALID_FIELD", ["reservations"])
                return
            (result,) = list(stub.ReserveStream(iter([pb.ReserveStreamRequest(reservations=batch)]), timeout=10))
            assert len(result.outcomes) == len(batch)
            for outcome in result.outcomes:  # per reservation: a decision or a refusal naming the field
                if outcome.HasField("error"):
                    refusal = Refusal.from_status(outcome.error)
                    assert refusal.code in ALLOWED, refusal
                    check_refusal(refusal)
            try:  # refused at once (no estate, no channel): a bound against a hang, as the 10 s of the calls above
                next(iter(stub.WatchAvailability(pb.WatchAvailabilityRequest(channel=channel), timeout=10)))
            except grpc.RpcError as exc:
                assert exc.code() in ALLOWED, (channel, exc.code(), exc.details())

        streams()
    return tried


async def test_every_rpc_answers_garbage_with_a_precise_error_and_stays_consistent(
        start_service: ServiceFactory) -> None:
    service, _ = await start_service()
    tried = await asyncio.to_thread(fuzz_rpcs, f"127.0.0.1:{service.port}")
    assert tried >= EXAMPLES + STREAM_EXAMPLES
    ledgers = [actor.ledger for actor in service.engine.actors]  # type: ignore[union-attr]
    records = {rid: rec for ledger in ledgers for rid, rec in ledger.reservations.items()}
    one_state_each(records)
    holds_match_positions(ledgers, records)  # nothing half-applied


NASTY = ["SALE", "COUNT", "RECEIPT", "ADJUST", "nan", "1e309", "-1", "0", "9" * 30, "", "\x00", "\u202e",
         "x" * 300, "sku-1", "L1", "pos"]
FIELDS = ["event_id", "source", "kind", "sku", "location", "quantity", "event_time_ms", "reservation_id", "junk"]


def garbage_entries(n: int, now: str, seed: int = 7) -> list[dict[str, str]]:
    """Seeded garbage: random subsets of the fields, each with a hostile or plausible value."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        entry = {f: rng.choice([*NASTY, now, str(rng.randint(-10**12, 10**12))]) for f in FIELDS
                 if rng.random() < 0.7}
        if rng.random() < 0.3:
            entry["event_id"] = f"g-{i}"
        out.append(entry or {"empty": ""})
    return out


def stream_facts_counted(service: AtpService) -> float:
    """Facts the service decided from the input streams, whatever the outcome (the metric)."""
    return sum(sample.value for metric in service.metrics.registry.collect() if metric.name == "atp_facts"
               for sample in metric.samples
               if sample.name == "atp_facts_total" and sample.labels.get("origin") == "stream")


async def test_input_stream_garbage_is_applied_or_dead_lettered_never_dropped(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, _ = await start_service()
    now = str(int(time.time() * 1000))
    entries = garbage_entries(200, now)
    entries += [{"event_id": f"ok-{n}", "source": "pos", "kind": "RECEIPT", "sku": "S", "location": "L",
                 "quantity": "1", "event_time_ms": now} for n in range(5)]
    before = stream_facts_counted(service)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for fields in entries:
            await client.xadd("atp:in:pos", fields)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while True:
            groups = await client.xinfo_groups("atp:in:pos")
            if groups and not groups[0]["pending"] and not groups[0]["lag"]:
                break
            assert time.monotonic() < deadline, groups
            await asyncio.sleep(0.05)
        dead = await client.xrange("atp:dlq")
    finally:
        await client.aclose()
    assert all(f[b"_reason"] for _, f in dead)
    assert service.engine is not None
    assert service.engine.availability([("S", "L")])[0].on_hand == 5
    assert len(dead) + (stream_facts_counted(service) - before) == len(entries)  # each one decided or dead-lettered
    assert len(dead) > len(entries) / 2  # the garbage really was garbage
    ledgers = [actor.ledger for actor in service.engine.actors]
    records = {rid: rec for ledger in ledgers for rid, rec in ledger.reservations.items()}
    holds_match_positions(ledgers, records)
