"""atpctl in plaintext against a service serving TLS (or with ``--tls-ca`` against one serving plaintext) said only
``cannot reach …: the connection failed (TRANSIENT_FAILURE)``, as for a service that is down. It now names the
flag to change, where the service proves which it speaks, and says nothing more where it does not (a port nothing
listens on, a TLS service whose certificate is of another CA). Real services, real atpctl processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from atp_client._handshake import PLAINTEXT_HINT, TLS_HINT
from atp_service.app.certs import make_certs
from tests.conftest import ServiceFactory
from tests.ports import held_port

TRANSIENT = "the connection failed (TRANSIENT_FAILURE)"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Our CA's certificates, and a second CA's."""
    return make_certs(tmp_path_factory.mktemp("certs")), make_certs(tmp_path_factory.mktemp("other"), "stranger")


async def atpctl(port: int, *flags: str) -> str:
    """What atpctl said on stderr, asking the service at ``port`` (which runs in this test's loop) for a position."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "atp_client.ctl", "--target", f"127.0.0.1:{port}", "--retries", "0",
                         "--timeout", "10", *flags, "availability", "A@L"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 6, done.stderr  # UNAVAILABLE: nothing was sent
    return done.stderr


async def test_plaintext_against_a_tls_service_names_tls_ca(start_service: ServiceFactory,
                                                            certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    service, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key")
    said = await atpctl(service.port)
    assert TRANSIENT in said and TLS_HINT in said, said
    assert PLAINTEXT_HINT not in said


async def test_plaintext_against_a_mutual_tls_service_names_tls_ca(start_service: ServiceFactory,
                                                                   certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    service, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key",
                                     tls_client_ca=ours / "ca.pem")
    said = await atpctl(service.port)
    assert TRANSIENT in said and TLS_HINT in said, said


async def test_tls_against_a_plaintext_service_says_it_serves_plaintext(start_service: ServiceFactory,
                                                                        certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    service, _ = await start_service()
    said = await atpctl(service.port, f"--tls-ca={ours / 'ca.pem'}")
    assert TRANSIENT in said and PLAINTEXT_HINT in said, said
    assert TLS_HINT not in said


async def test_tls_of_another_ca_gets_no_hint_about_plaintext(start_service: ServiceFactory,
                                                              certs: tuple[Path, Path]) -> None:
    """Both speak TLS: which flag is wrong (the CA, the name) is not told by a probe; nothing is guessed."""
    ours, stranger = certs
    service, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key")
    said = await atpctl(service.port, f"--tls-ca={stranger / 'ca.pem'}")
    assert TRANSIENT in said, said
    assert PLAINTEXT_HINT not in said and TLS_HINT not in said, said


@pytest.mark.parametrize("tls", [False, True])
async def test_a_port_nothing_listens_on_gets_no_hint(certs: tuple[Path, Path], tls: bool) -> None:
    ours, _ = certs
    said = await atpctl(held_port(), *([f"--tls-ca={ours / 'ca.pem'}"] if tls else []))
    assert "cannot reach" in said, said
    assert PLAINTEXT_HINT not in said and TLS_HINT not in said, said
