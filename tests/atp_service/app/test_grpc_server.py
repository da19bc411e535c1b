"""The gRPC server's start-up refusals name the setting at fault."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from atp_service import AtpService
from atp_service.app.certs import make_certs
from atp_service.app.grpc_server import unusable_host
from atp_service.app.keyspace import StartupError
from tests.conftest import test_config as make_config


@pytest.mark.parametrize(("fault", "told"), [("key of another certificate", "tls_cert/tls_key: "),
                                             ("not PEM", "tls_cert/tls_key: "), ("missing", "tls: cannot read ")])
async def test_a_tls_key_that_is_not_the_certificate_s_is_refused_naming_tls_not_the_port(
        redis_url: str, tmp_path: Path, fault: str, told: str) -> None:
    """Defect: gRPC refuses such a pair at bind, and the service said "port: cannot listen for gRPC
    on 127.0.0.1:N (in use?); choose another with --port": an operator rotating a certificate chased
    a port conflict that was not there. Even a key file that could not be read was reported so: its
own refusal, a StartupError, is a RuntimeError, which ``bind`` took for gRPC's."""
    certs = make_certs(tmp_path / "certs")
    key = certs / "client.key"
    if fault == "not PEM":
        key = tmp_path / "garbage.key"
        key.write_text("not a key\n")
    elif fault == "missing":
        key = tmp_path / "missing.key"
    service = AtpService(make_config(tls_cert=certs / "server.pem", tls_key=key), redis_url)
    with pytest.raises(StartupError) as refused:
        await service.start()
    await service.stop(grace_s=0)
    assert str(refused.value).startswith(told)
    assert str(key) in str(refused.value) and "port" not in str(refused.value)


async def test_a_start_refused_after_grpc_started_leaves_nothing_listening(redis_url: str) -> None:
    """The metrics port is bound after gRPC has started: its refusal (a StartupError) left the gRPC
    server running behind it — its port still taken, and a process that did not call ``stop()``
    hung at exit for ever (gRPC's poller thread is never joined while a server it serves is alive).
    A refused start stops what it had started, as a refused recovery already did."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = AtpService(make_config(host="127.0.0.1", metrics_host="127.0.0.1",
                                         metrics_port=taken.getsockname()[1]), redis_url)
        with pytest.raises(StartupError, match=r"^metrics_port: cannot listen"):
            await service.start()
    assert service.port, "gRPC had started before the refusal"
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service.port), timeout=10).close()
    finally:
        await service.stop(grace_s=0)


NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): an address, on no interface of this host


@pytest.mark.parametrize(("setting", "told"), [
    ("host", "host: cannot listen for gRPC on {host}:"),
    ("metrics_host", "metrics_host: cannot listen on {host}:"),
])
@pytest.mark.parametrize("host", ["", NOT_HERE])
async def test_a_host_to_listen_on_that_is_no_address_here_is_refused_naming_the_host_not_the_port(
        redis_url: str, setting: str, told: str, host: str) -> None:
    """`ATP_METRICS_HOST=` (empty) or an address of another machine was refused as "metrics_port: cannot
    listen ...; choose another with --metrics-port", and `ATP_HOST` so as "port: ... (in use?); choose
    another with --port": the operator moved a port that was never at fault."""
    hosts = {"host": "127.0.0.1", "metrics_host": "127.0.0.1", setting: host}
    service = AtpService(make_config(**hosts, metrics_port=0), redis_url)
    with pytest.raises(StartupError) as refused:
        await service.start()
    await service.stop(grace_s=0)
    assert str(refused.value).startswith(told.format(host=host)), str(refused.value)
    assert "--port" not in str(refused.value) and "--metrics-port" not in str(refused.value)


def test_a_host_that_can_listen_here_is_not_blamed() -> None:
    """Asked once a bind failed: a usable host leaves the port at fault (in use), as it was said."""
    assert unusable_host("127.0.0.1") is None and unusable_host("0.0.0.0") is None
    assert unusable_host("") is not None and unusable_host(NOT_HERE) is not None
