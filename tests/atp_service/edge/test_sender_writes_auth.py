"""``atp-quarantine-by-sender`` (with ``atp-forwarded``) asks the process deciding the facts to write those it
quarantines neither to the quarantine stream nor to ``atp_facts_total``: the input streams' reader that sent them
does both, each with its entry's XACK (``intake.owners.SENDER_WRITES_KEY``). Only a peer may ask that where auth
is on: from a caller of another role (``ingest``) its late facts were answered QUARANTINED and were in neither,
quarantined unseen (E6: never dropped silently)."""

from __future__ import annotations

from pathlib import Path

import grpc
import redis

from atp_client import FORWARDED_KEY, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.edge.auth import new_token, token_hash
from atp_service.intake.owners import SENDER_WRITES_KEY
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory

DAY_MS = 24 * 3600 * 1000


def _callers(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    tokens = {role: new_token() for role in ("ingest", "peer")}
    path = tmp_path / "callers.toml"
    path.write_text("\n".join(f'[[callers]]\nname = "{role}-caller"\nroles = ["{role}"]\n'
                              f'token_sha256 = "{token_hash(t)}"\n' for role, t in tokens.items()))
    return path, tokens


def _fact(event_id: str, at_ms: int) -> pb.Fact:
    return pb.Fact(event_id=event_id, source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A", location="L", quantity=1,
                   event_time=timestamp(at_ms))


async def test_only_a_peer_may_ask_that_the_facts_it_sends_be_quarantined_unwritten(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    callers, tokens = _callers(tmp_path)
    service, _ = await start_service(auth="on", callers_file=callers)
    now = service.clock.now_ms()
    r = redis.Redis.from_url(redis_url)
    sender_writes = ((FORWARDED_KEY, "127.0.0.1:1"), (SENDER_WRITES_KEY, "1"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = pb_grpc.AvailabilityServiceStub(channel)

        def record(role: str, *events: pb.Fact, extra: tuple[tuple[str, str], ...] = ()) -> object:
            return stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=20,
                                     metadata=(("authorization", f"Bearer {tokens[role]}"), *extra))

        answer = await record("ingest", _fact("now", now))  # the shard's stream time: now
        assert [f.outcome for f in answer.results] == [pb.FACT_OUTCOME_APPLIED]
        late = _fact("late", now - 2 * DAY_MS)  # past the grace window: quarantined (E6)
        assert await told(record("ingest", late, extra=sender_writes)) == (grpc.StatusCode.PERMISSION_DENIED,
                                                                           "ROLE_NOT_PERMITTED")
        assert r.xrange("atp:quarantine") == [], "refused before anything was decided"
        answer = await record("ingest", late)
        assert [f.outcome for f in answer.results] == [pb.FACT_OUTCOME_QUARANTINED]
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"late"], "written where it was decided"
        # A peer's send: answered QUARANTINED, written by the sender (here: by none), as the input streams' reader asks.
        answer = await record("peer", _fact("late-2", now - 2 * DAY_MS), extra=sender_writes)
        assert [f.outcome for f in answer.results] == [pb.FACT_OUTCOME_QUARANTINED]
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"late"]
