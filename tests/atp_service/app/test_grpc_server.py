"""The gRPC server's start-up refusals name the setting at fault."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from atp_service import AtpService
from atp_service.app import grpc_server
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


class _NoIpv6:
    """A host whose kernel has IPv6 off (``ipv6.disable=1``): no AF_INET6 socket can be made."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> Any:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return self.real(family, *args, **kwargs)


@pytest.mark.parametrize("host", ["[::]", "::"])
def test_the_ipv6_wildcard_on_a_host_without_ipv6_is_not_blamed_gRPC_listens_on_every_ipv4_interface(
        monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """gRPC takes ``[::]`` on a host without IPv6 as every IPv4 interface (its wildcard falls back to 0.0.0.0), so a
    failed bind there is the port's (in use). Defect (3715dc19): the probe tried an AF_INET6 socket alone and blamed
    the host ("Address family not supported by protocol; choose another with --host"), the port in use unsaid."""
    monkeypatch.setattr(grpc_server.socket, "socket", _NoIpv6(socket.socket))
    assert grpc_server.unusable_host(host) is None


def test_a_name_with_an_address_here_among_others_is_not_blamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC listens on every address a name resolves to, and starts on those it can bind: a name whose first address
    is another machine's but another is this host's (``localhost`` as ::1 then 127.0.0.1 without IPv6, a name of
    several A records) failed for the port. Defect (3715dc19): the first address alone was tried, the host blamed."""
    real = socket.getaddrinfo

    def resolved(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "several.example":
            return real(NOT_HERE, *args, **kwargs) + real("127.0.0.1", *args, **kwargs)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(grpc_server.socket, "getaddrinfo", resolved)
    assert grpc_server.unusable_host("several.example") is None
    assert grpc_server.unusable_host(NOT_HERE) is not None
