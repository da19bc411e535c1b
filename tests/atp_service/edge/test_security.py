"""Only authorised callers get in: bearer tokens with roles, TLS and mutual TLS, audit lines, no secrets logged."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_client import AtpClient, AtpError, timestamp
from atp_client._client import tls_credentials
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app.certs import make_certs
from atp_service.app.keyspace import StartupError
from atp_service.edge.auth import new_token, token_hash
from atp_service.storage.embedded_redis import redis_server_binary
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until

ROLES = ("oms", "ingest", "channel", "admin")
CALL_BOUND_S = 20.0
"""The deadline of calls answered or refused at once (a TLS handshake, then a read): a bound against a
hang only, so a busy host that takes seconds over a handshake is not told DEADLINE_EXCEEDED."""


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A callers file with one caller per role; returns it and role -> token."""
    tokens = {role: new_token() for role in ROLES}
    entries = [f'[[callers]]\nname = "{role}-caller"\nroles = ["{role}"]\ntoken_sha256 = "{token_hash(t)}"\n'
               for role, t in tokens.items()]
    path = tmp_path / "callers.toml"
    path.write_text("\n".join(entries))
    return path, tokens


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Our CA's certificates, and a second CA's (a client the service must not trust)."""
    ours = make_certs(tmp_path_factory.mktemp("certs"))
    stranger = make_certs(tmp_path_factory.mktemp("other-ca"), client_cn="stranger")
    return ours, stranger


async def code_of(call: object) -> grpc.StatusCode:
    """The status of a refused call that had no answer from the service (TLS, transport)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()



async def test_roles_decide_what_each_caller_may_call(start_service: ServiceFactory, redis_url: str,
                                                      tokens: tuple[Path, dict[str, str]],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    callers, token = tokens
    service, anonymous = await start_service(auth="on", callers_file=callers)
    target = f"127.0.0.1:{service.port}"
    clients = {role: AtpClient(target, token=t) for role, t in token.items()}
    stranger = AtpClient(target, token="not-a-real-token")
    fact = pb.Fact(event_id="e1", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A", location="L", quantity=5,
                   event_time=timestamp(service.clock.now_ms()))
    try:
        with caplog.at_level(logging.WARNING, logger="atp_service.audit"):
            assert await told(anonymous.reserve("r0", [("A", "L", 1)])) == (grpc.StatusCode.UNAUTHENTICATED,
                                                                             "TOKEN_MISSING")
            assert await told(stranger.reserve("r0", [("A", "L", 1)])) == (grpc.StatusCode.UNAUTHENTICATED,
                                                                            "TOKEN_INVALID")
            assert [r.outcome for r in await clients["ingest"].record_events([fact])] == [pb.FACT_OUTCOME_APPLIED]
            assert (await clients["oms"].reserve("r1", [("A", "L", 2)])).state == pb.RESERVATION_STATE_HELD
            assert (await clients["channel"].availability([("A", "L")]))[0].reserved == 2
            admin_set = clients["admin"].stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="A", location="L",
                                                                                      quantity=1))
            assert (await admin_set).availability.safety_stock == 1
            denied = [
                clients["oms"].stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="A", location="L", quantity=0)),
                clients["oms"].record_events([fact]),
                clients["ingest"].reserve("r2", [("A", "L", 1)]),
                clients["channel"].confirm("r1"),
                clients["admin"].reserve("r3", [("A", "L", 1)]),
            ]
            for call in denied:
                assert await told(call) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
            stream = clients["channel"].stub.ReserveStream(iter(()))  # no write to race the refusal (grpc/grpc#36066)
            assert await told(stream.read()) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
            # Past the check, the watch fails for its own reason: this service has no channels.
            watch = clients["channel"].stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="web"))
            assert await told(watch.read()) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
            health = health_pb2_grpc.HealthStub(anonymous.channel)  # probes need no token
            checked = await health.Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for c in [*clients.values(), stranger]:
            await c.close()
    audit = [vars(r) for r in caplog.records if r.name == "atp_service.audit"]  # fields by name
    lines = [f"{r['msg']} {r}" for r in audit]
    first = audit[0]
    assert (first["event"], first["rpc"], first["caller"], first["code"]) == (
        "auth_denied", "Reserve", "-", "UNAUTHENTICATED")
    assert any((r["caller"], r["code"], r["rpc"]) == ("oms-caller", "PERMISSION_DENIED", "SetSafetyStock")
               for r in audit)
    assert len(lines) == 2 + len(denied) + 1
    everything_logged = caplog.text + "\n".join(lines)
    assert not any(t in everything_logged for t in token.values())  # secrets are never logged


async def test_a_reserve_stream_refused_at_its_start_is_told_its_refusal_every_time(
        start_service: ServiceFactory, tokens: tuple[Path, dict[str, str]]) -> None:
    """``AtpClient.reserve_stream`` wrote its first batch at once; one refused at the start (here a
    role) raced that write, and grpcio's asyncio client told about one in seven of them
    ``INTERNAL`` "Internal error from Core" (``Retryable``) instead (grpc/grpc#36066). The service
    sends its headers once it accepts a stream, and the client writes only then."""
    callers, token = tokens
    service, _ = await start_service(auth="on", callers_file=callers)
    told_so: Counter[tuple[str, str]] = Counter()
    async with AtpClient(f"127.0.0.1:{service.port}", token=token["channel"]) as channel:
        for n in range(200):
            batch = [pb.ReserveRequest(reservation_id=f"r{n}", lines=[pb.Line(sku="A", location="L", quantity=1)])]
            with pytest.raises(AtpError) as refused:
                async for _ in channel.reserve_stream([batch, batch]):
                    pass
            told_so[(type(refused.value).__name__, refused.value.refusal.reason)] += 1
    assert told_so == {("AccessDenied", "ROLE_NOT_PERMITTED"): 200}


async def test_auth_is_on_by_default_outside_demo_mode_and_needs_a_callers_file(redis_url: str,
                                                                                tmp_path: Path) -> None:
    for config, message in (
        (make_config(auth="auto", demo=False), "callers_file: auth is on"),
        (make_config(auth="on", callers_file=tmp_path / "missing.toml"), "cannot read"),
    ):
        service = AtpService(config, redis_url)
        with pytest.raises(StartupError, match=message):
            await service.start()
        await service.stop(grace_s=0)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[callers]]\nname = "x"\nroles = ["root"]\ntoken_sha256 = "' + "0" * 64 + '"\n')
    service = AtpService(make_config(auth="on", callers_file=bad), redis_url)
    with pytest.raises(StartupError, match=r"callers\[0\].roles"):
        await service.start()
    await service.stop(grace_s=0)


@pytest.mark.parametrize(("content", "named"), [
    ('[[callers]]\nname = "x"\nroles = [["admin"]]\ntoken_sha256 = "' + "0" * 64 + '"\n', r"callers\[0\]\.roles"),
    ('[[callers]]\nname = "x"\nroles = [{role = "admin"}]\ntoken_sha256 = "' + "0" * 64 + '"\n',
     r"callers\[0\]\.roles"),
    ("[[callers]]\nname = \"caf\xe9\"\n", "not UTF-8"),
    # A key the service does not read: an operator "revoking" a caller with it kept the caller in.
    ('[[callers]]\nname = "x"\nroles = ["oms"]\ndisabled = true\ntoken_sha256 = "' + "0" * 64 + '"\n',
     r"callers\[0\]\.disabled: not a key of a caller \(name, roles, token_sha256\)"),
    ('[[caller]]\nname = "x"\n\n[[callers]]\nname = "y"\nroles = ["oms"]\ntoken_sha256 = "' + "0" * 64 + '"\n',
     r"caller: not a key of the callers file \(callers\)"),
])
async def test_a_callers_file_that_cannot_be_used_stops_the_start_naming_what_is_wrong(
        redis_url: str, tmp_path: Path, content: str, named: str) -> None:
    """Roles given as arrays or tables (unhashable) crashed the check with a TypeError, a file that is
    not UTF-8 with a UnicodeDecodeError: a traceback and exit status 1, which supervisors restart for
    ever, instead of a StartupError naming the key (exit status 2)."""
    path = tmp_path / "callers.toml"
    path.write_bytes(content.encode("latin-1"))
    service = AtpService(make_config(auth="on", callers_file=path), redis_url)
    with pytest.raises(StartupError, match=named):
        await service.start()
    await service.stop(grace_s=0)


async def test_tls_and_mutual_tls(start_service: ServiceFactory, certs: tuple[Path, Path]) -> None:
    ours, stranger = certs
    ca = (ours / "ca.pem").read_bytes()
    tls, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key")
    async with AtpClient(f"127.0.0.1:{tls.port}", credentials=tls_credentials(ca), timeout_s=CALL_BOUND_S) as client:
        assert (await client.availability([("A", "L")]))[0].available == 0
    async with AtpClient(f"127.0.0.1:{tls.port}", timeout_s=CALL_BOUND_S) as plaintext:
        assert await code_of(plaintext.availability([("A", "L")])) == grpc.StatusCode.UNAVAILABLE

    mtls, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key",
                                  tls_client_ca=ours / "ca.pem")
    target = f"127.0.0.1:{mtls.port}"
    trusted = tls_credentials(ca, (ours / "client.pem").read_bytes(), (ours / "client.key").read_bytes())
    untrusted = tls_credentials(ca, (stranger / "client.pem").read_bytes(), (stranger / "client.key").read_bytes())
    async with AtpClient(target, credentials=trusted, timeout_s=CALL_BOUND_S) as client:
        assert (await client.availability([("A", "L")]))[0].available == 0
    for credentials in (tls_credentials(ca), untrusted):
        async with AtpClient(target, credentials=credentials, timeout_s=CALL_BOUND_S) as client:
            assert await code_of(client.availability([("A", "L")])) == grpc.StatusCode.UNAVAILABLE


async def test_redis_password_in_the_url_works_and_is_never_logged(tmp_path_factory: pytest.TempPathFactory,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from atp_service import EmbeddedRedis

    secret = "s3cret-redis-pw"
    own = EmbeddedRedis(tmp_path_factory.mktemp("pw-redis"), password=secret).start()
    try:
        with caplog.at_level(logging.DEBUG):
            service = AtpService(make_config(), own.url)
            await service.start()
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                decided = await client.reserve("r", [("A", "L", 1)])
                assert decided.state == pb.RESERVATION_STATE_REJECTED  # no stock: decided, durable
            await service.stop(grace_s=0.1)
        wrong = AtpService(make_config(redis_timeout_s=0.2), own.url.replace(secret, "wrong"))
        with caplog.at_level(logging.DEBUG):
            starting = asyncio.ensure_future(wrong.start())
            # It waits for Redis (health NOT_SERVING) instead of dying: refused, said so, tried again, refused again.
            # Counted, not slept on: a sleep passed a start that died at its first try wherever that try came later.
            await until(lambda: starting.done() or _redis_waits(caplog) >= 2, "the start refused twice, waiting")
            assert not starting.done(), starting
            starting.cancel()
            await wrong.stop(grace_s=0)
        assert secret not in caplog.text and "wrong" not in caplog.text
    finally:
        own.stop()


def _redis_waits(caplog: pytest.LogCaptureFixture) -> int:
    """The start's tries Redis refused, each said before the next (``redis_wait.py``: ``redis_waiting``)."""
    return sum(getattr(record, "event", None) == "redis_waiting" for record in caplog.records)


@pytest.fixture
def tls_redis(certs: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    """Debian's redis-server speaking TLS only; yields a ``rediss://`` URL that trusts our CA."""
    ours, _ = certs
    port = held_port()
    server = subprocess.Popen([redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", str(ours / "server.pem"), "--tls-key-file", str(ours / "server.key"),
                               "--tls-ca-cert-file", str(ours / "ca.pem"), "--tls-auth-clients", "no",
                               "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ours / 'ca.pem'}"
    server.terminate()
    server.wait(10)


async def test_rediss_url_talks_tls_to_redis(tls_redis: str) -> None:
    """The log, the input streams and the channel feeds all connect through the URL: here over TLS."""
    service = AtpService(make_config(), tls_redis)
    await service.start()
    async with AtpClient(f"127.0.0.1:{service.port}") as client:
        fact = pb.Fact(event_id="e1", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A", location="L", quantity=5,
                       event_time=timestamp(service.clock.now_ms()))
        assert [r.outcome for r in await client.record_events([fact])] == [pb.FACT_OUTCOME_APPLIED]
        assert (await client.reserve("r", [("A", "L", 2)])).state == pb.RESERVATION_STATE_HELD
    await service.stop(grace_s=0.1)
    restarted = AtpService(make_config(), tls_redis)  # what was acknowledged comes back over TLS
    await restarted.start()
    async with AtpClient(f"127.0.0.1:{restarted.port}") as client:
        assert (await client.get_reservation("r")).state == pb.RESERVATION_STATE_HELD
    await restarted.stop(grace_s=0.1)


@pytest.mark.parametrize(("peer_file", "named"), [
    (b"not-a-token-of-the-callers-file", "not a caller with the peer role"),
    (b"oms-token-given-by-mistake", "not a caller with the peer role"),
    (b"\xff\xfe-not-text", "not UTF-8"),
])
async def test_a_peer_token_the_processes_would_refuse_stops_the_start(redis_url: str, tmp_path: Path,
                                                                       peer_file: bytes, named: str) -> None:
    """The peer token was read as is: one missing from the callers file, or of a caller without the
    peer role, started a process that reported SERVING while every order step and every input-stream
    fact it sent another process was refused (orders spanning processes stayed undecided, their units
    held); a file that was not UTF-8 crashed the start with a traceback (exit status 1)."""
    oms = "oms-token-given-by-mistake"
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "orders"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(oms)}"\n')
    (tmp_path / "peer.token").write_bytes(peer_file)
    config = make_config(auth="on", callers_file=callers, ownership="leases", port=held_port(),
                         peer_token_file=tmp_path / "peer.token")
    config = make_config(**{**vars(config), "advertise_address": f"127.0.0.1:{config.port}"})
    service = AtpService(config, redis_url)
    try:
        with pytest.raises(StartupError, match=f"peer_token_file: .*{named}"):
            await service.start()
    finally:
        await service.stop(grace_s=0)


async def test_health_watch_answers_without_a_token(start_service: ServiceFactory,
                                                    tokens: tuple[Path, dict[str, str]]) -> None:
    """Health.Watch (a coroutine writing its answers, not an async generator) went through the
    stream wrapper of ``handlers``, which iterated it: every Watch ended UNKNOWN ("'coroutine' object
    has no attribute 'aclose'") with an ERROR traceback per call, so a probe or load balancer watching
    health never saw a status, and any caller, needing no token, could fill the log with them."""
    callers, _ = tokens
    _, anonymous = await start_service(auth="on", callers_file=callers)
    health = health_pb2_grpc.HealthStub(anonymous.channel)
    watched = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watched.read()).status == health_pb2.HealthCheckResponse.SERVING
    watched.cancel()
    unknown = health.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()


async def test_a_health_watch_of_a_name_past_max_id_length_is_refused_naming_the_field(
        start_service: ServiceFactory, tokens: tuple[Path, dict[str, str]]) -> None:
    """A watch keeps its request for as long as it is open, and any caller may open one (no token): up to
    ``max_open_service_streams`` of them, each naming a service of up to ``max_message_bytes`` (4096 of
    4 MiB: 16 GiB held). A name is bounded as ids are; a name within it is watched as before."""
    callers, _ = tokens
    _, anonymous = await start_service(auth="on", callers_file=callers)
    health = health_pb2_grpc.HealthStub(anonymous.channel)
    watched = health.Watch(health_pb2.HealthCheckRequest(service="x" * 129))  # max_id_length: 128 bytes
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await watched.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service: longer than 128 bytes (limit max_id_length)" in str(refused.value.details())
    within = health.Watch(health_pb2.HealthCheckRequest(service="x" * 128))
    assert (await within.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    within.cancel()
