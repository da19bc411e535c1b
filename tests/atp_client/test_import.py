"""``atpctl events import`` in calls the service takes: ``--batch`` facts and a bounded size each; a
call refused for good names the file lines it held, and importing again is safe (E8)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from atp_client import AtpClient, RetryPolicy, new_token, token_hash, typed
from atp_client._import import FRAMING_BYTES, chunks, send_all
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from atp_service.edge import record as record_module
from atp_service.edge.auth import Callers
from reservation import Limits
from tests.atp_client.test_ctl import receipt
from tests.atp_service.edge.test_api import receipt as fact
from tests.conftest import ServiceFactory, services_on


def import_file(port: int, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", f"127.0.0.1:{port}", "--json",
                           "events", "import", str(path), *args], capture_output=True, text=True, timeout=60)


async def test_a_service_taking_fewer_facts_a_call_than_the_default_batch_imports_with_batch(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A deployment with ``max_events_per_call`` below 1000 refused every call of the fixed 1000-fact
    chunk (LIMIT_EXCEEDED): no file could be imported. ``--batch`` sends calls it takes; a batch
    still too large is refused naming the file lines of the call, and a run again is safe."""
    service, client = await start_service(limits=Limits(max_events_per_call=10))
    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now - 1000) + "\n" for n in range(25)))
    refused = await asyncio.to_thread(import_file, service.port, facts, "--batch", "20")
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, (refused.returncode, refused.stderr)
    assert f"{facts}:1-20: not applied" in refused.stderr and "max_events_per_call" in refused.stderr
    assert "again" in refused.stderr, refused.stderr
    assert json.loads(refused.stdout) == {"refused": 20, "in_doubt": 0, "not_sent": 5}
    done = await asyncio.to_thread(import_file, service.port, facts, "--batch", "10")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert json.loads(done.stdout) == {"FACT_OUTCOME_APPLIED": 25}
    (position,) = await client.availability([("IMP", "DC")])
    assert position.on_hand == 25


def test_calls_stay_within_their_byte_bound_in_file_order_with_their_lines() -> None:
    """Facts with long names fill a message long before a count of them does."""
    numbered = [(n + 2, pb.Fact(event_id=f"e{n}-" + "x" * 120, source="s" * 128, sku="k" * 128, location="l" * 128,
                                kind=pb.FACT_KIND_RECEIPT, quantity=1)) for n in range(100)]
    limit = 5_000
    calls = list(chunks(numbered, batch=1000, max_bytes=limit))
    assert len(calls) > 1
    assert [n for lines, _ in calls for n in lines] == [n for n, _ in numbered]
    assert [f for _, facts in calls for f in facts] == [f for _, f in numbered]
    for lines, facts in calls:
        assert len(lines) == len(facts)
        assert pb.RecordEventsRequest(events=facts).ByteSize() <= limit
        assert sum(f.ByteSize() + FRAMING_BYTES for f in facts) <= limit
    assert [len(facts) for _, facts in chunks(numbered, batch=30)] == [30, 30, 30, 10]


async def test_a_call_in_doubt_whose_retry_is_refused_access_is_in_doubt_not_refused(
        start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call answered OUTCOME_UNKNOWN (its answer too large to send: the facts were applied) is sent
    again after the delay the service asks for; the retry was refused for another reason — the token
    not known there (a process behind the same address whose callers file was rolled out without it)
    — and the import counted the call's facts ``refused``, "not applied", although the first try
    applied them (R7). In doubt, as ``RoutedClient`` says of a change lost then refused so."""
    token = new_token()
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "wms"\nroles = ["ingest", "oms"]\ntoken_sha256 = "{token_hash(token)}"\n')
    service, _ = await start_service(auth="on", callers_file=callers, max_message_bytes=64 << 10)
    revoked = False
    fits, lookup = record_module._check_answer_fits, Callers.lookup

    def answered_in_doubt(*args: Any) -> None:
        nonlocal revoked
        try:
            fits(*args)
        except Exception:
            revoked = True  # the retry reaches a process that does not know the token
            raise

    monkeypatch.setattr(record_module, "_check_answer_fits", answered_in_doubt)
    monkeypatch.setattr(Callers, "lookup", lambda self, t: None if revoked else lookup(self, t))
    facts = [pb.Fact(event_id="good", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="IMP", location="DC", quantity=7,
                     event_time=Timestamp(seconds=int(time.time()) - 1))]
    facts += [pb.Fact(event_id=f"bad-{n}", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="IMP", location="DC",
                      quantity=-1) for n in range(1500)]  # each answered with an error larger than itself
    async with AtpClient(f"127.0.0.1:{service.port}", token=token) as client:
        done = await send_all(client, enumerate(facts, start=1), len(facts), len(facts), lambda _r: None)
        assert revoked, "the first try was not answered OUTCOME_UNKNOWN"
        assert done.summary() == {"refused": 0, "in_doubt": len(facts), "not_sent": 0}, done.summary()
        assert done.error is not None and (done.error.code(), typed(done.error).reason) == (
            grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), done.error
        revoked = False
        (position,) = await client.availability([("IMP", "DC")])
    assert position.on_hand == 7  # the first try applied it


async def test_a_call_refused_with_nothing_recorded_is_refused_not_in_doubt(tmp_path: Path) -> None:
    """A call the service refused saying none of it was recorded (Redis full: ``STORAGE_UNREACHABLE``,
    "nothing was applied") was counted ``in_doubt`` and its lines said "sent without an answer (applied
    or not)": every retryable refusal was. Without gRPC's retries (``--retries 0``) it is ``refused``,
    not applied; with them it stays in doubt, as the last try's refusal may hide an earlier try lost
    mid-way (``in_doubt_after``)."""
    now = int(time.time() * 1000)
    facts = [fact(f"full-{n}", "IMP", "DC", 1, now - 1000) for n in range(2)]
    with EmbeddedRedis(tmp_path / "redis") as server:
        admin = redis.Redis.from_url(server.url)
        async with services_on(server.url) as start:
            service, _ = await start(shards=1)
            admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
            try:
                for retry, expected in ((None, {"refused": 2, "in_doubt": 0, "not_sent": 0}),
                                        (RetryPolicy(attempts=2), {"refused": 0, "in_doubt": 2, "not_sent": 0})):
                    async with AtpClient(f"127.0.0.1:{service.port}", retry=retry) as client:
                        done = await send_all(client, enumerate(facts, start=1), len(facts), len(facts),
                                              lambda _r: None, patience_s=0)
                    assert done.summary() == expected, (retry, done.summary())
                    assert done.error is not None and typed(done.error).reason == "STORAGE_UNREACHABLE", done.error
            finally:
                admin.config_set("maxmemory", 0)
        admin.close()
