"""Routing against the real gRPC service and a real Redis: GetRouting.

Until ``AtpService`` wires it, each test advertises the service's address itself (``advertised``),
as the service will once it listens.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from atp_client import AtpClient, place, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge.auth import new_token, token_hash
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000
SKUS = ("A", "B", "C", "D")


def advertised(service: AtpService) -> str:
    """What ``AtpService`` is to do once it listens: tell the servicer its address."""
    address = f"127.0.0.1:{service.port}"
    service._servicer.advertise(address, service.config.shards)
    return address


async def stock(client: AtpClient, clock_ms: int, quantity: int = 10) -> None:
    facts = [pb.Fact(event_id=f"r-{sku}", source="wms", kind=pb.FACT_KIND_RECEIPT, sku=sku, location="L",
                     quantity=quantity, event_time=timestamp(clock_ms - 1000)) for sku in SKUS]
    assert all(r.outcome == pb.FACT_OUTCOME_APPLIED for r in await client.record_events(facts))


async def test_get_routing_routes_every_group_to_the_one_process(start_service: ServiceFactory) -> None:
    service, client = await start_service(shards=6)
    address = advertised(service)
    answer = await client.stub.GetRouting(pb.GetRoutingRequest(), timeout=5)
    assert (answer.shards, answer.placement, answer.address) == (6, "crc32-mod", address)
    assert [(g.group, g.address, g.epoch) for g in answer.groups] == [(g, address, 0) for g in range(6)]
    assert service.engine is not None
    assert all(service.engine.place(sku) == place(sku, 6) for sku in (*SKUS, "sku-00001", "Größe-42"))


async def test_get_routing_is_a_read(start_service: ServiceFactory, tmp_path: Path) -> None:
    tokens = {role: new_token() for role in ("oms", "ingest", "channel", "admin")}
    callers = tmp_path / "callers.toml"
    callers.write_text("\n".join(f'[[callers]]\nname = "{r}"\nroles = ["{r}"]\ntoken_sha256 = "{token_hash(t)}"\n'
                                 for r, t in tokens.items()))
    service, _ = await start_service(auth="on", callers_file=callers)
    advertised(service)
    for role, token in tokens.items():
        async with AtpClient(f"127.0.0.1:{service.port}", token=token, timeout_s=5) as client:
            call = client.stub.GetRouting(pb.GetRoutingRequest())
            if role == "ingest":
                assert await told(call) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
            else:
                assert (await call).shards == service.config.shards
