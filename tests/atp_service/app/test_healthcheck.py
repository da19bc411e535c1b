"""``python -m atp_service.app.healthcheck`` (the image's HEALTHCHECK, the Kubernetes probes) against a
real service: plaintext, TLS and mutual TLS from the service's own settings; NOT_SERVING, nothing
listening and a broken setting all exit 1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atp_service import AtpService
from atp_service.app.certs import make_certs
from atp_service.app.healthcheck import ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_SERVER_NAME, ProbeError, probe_from
from atp_service.config import ServiceConfig
from atp_service.config_settings import OTHER_TOOLS
from atp_service.edge.auth import new_token, token_hash
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.ports import held_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Our CA's certificates, and a second CA's (a client the service must not trust)."""
    return make_certs(tmp_path_factory.mktemp("certs")), make_certs(tmp_path_factory.mktemp("other"), "stranger")


async def health(port: int, **settings: str | Path) -> tuple[int, str]:
    """Run the command as a container would: the service's ``ATP_*`` settings in the environment,
    ``ATP_HOST`` the wildcard the image sets. Returns (exit status, its output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    env.update({"ATP_HOST": "0.0.0.0", "ATP_PORT": str(port), **{k: str(v) for k, v in settings.items()}})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "atp_service.app.healthcheck", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def tls(certs: Path) -> dict[str, Path]:
    return {"ATP_TLS_CERT": certs / "server.pem", "ATP_TLS_KEY": certs / "server.key"}


async def test_plaintext_serving_exits_0_with_auth_on_and_no_token(start_service: ServiceFactory,
                                                                    tmp_path: Path) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "oms"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(new_token())}"\n')
    service, _ = await start_service(auth="on", callers_file=callers)
    status, out = await health(service.port, ATP_AUTH="on", ATP_CALLERS_FILE=callers)
    assert (status, out.strip()) == (0, f"atp-service health: SERVING at 127.0.0.1:{service.port}")


async def test_tls_checks_the_service_against_its_own_certificate(start_service: ServiceFactory,
                                                                  certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    service, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key")
    assert (await health(service.port, **tls(ours)))[0] == 0
    # The advertised address's host is the name checked (the certificate names localhost).
    assert (await health(service.port, **tls(ours), ATP_ADVERTISE_ADDRESS="localhost:1"))[0] == 0
    # A name the certificate does not hold fails: the certificate is really verified.
    for name in ({"ATP_HEALTH_SERVER_NAME": "atp.elsewhere.example"},
                 {"ATP_ADVERTISE_ADDRESS": "atp.elsewhere.example:50051"}):
        status, out = await health(service.port, **tls(ours), **name)
        assert status == 1 and "no answer" in out
    # Without TLS settings (the image's former plaintext check) a TLS service is never healthy.
    status, out = await health(service.port)
    assert status == 1 and "UNAVAILABLE" in out


async def test_mutual_tls_presents_the_health_client_certificate(start_service: ServiceFactory,
                                                                 certs: tuple[Path, Path]) -> None:
    ours, stranger = certs
    service, _ = await start_service(tls_cert=ours / "server.pem", tls_key=ours / "server.key",
                                     tls_client_ca=ours / "ca.pem")
    mutual = {**tls(ours), "ATP_TLS_CLIENT_CA": ours / "ca.pem"}
    status, out = await health(service.port, **mutual, ATP_HEALTH_TLS_CERT=ours / "client.pem",
                               ATP_HEALTH_TLS_KEY=ours / "client.key")
    assert (status, out.strip()) == (0, f"atp-service health: SERVING at 127.0.0.1:{service.port}")
    # By default the check presents the service's own certificate, and make_certs' server
    # certificate is for servers only: refused, as is a client of another CA.
    assert (await health(service.port, **mutual))[0] == 1
    assert (await health(service.port, **mutual, ATP_HEALTH_TLS_CERT=stranger / "client.pem",
                         ATP_HEALTH_TLS_KEY=stranger / "client.key"))[0] == 1


class LogSeen(logging.Handler):
    """Sets ``seen`` when a record holding ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@contextlib.asynccontextmanager
async def starting_until_logged(service: AtpService, text: str, limit_s: float = 30.0
                                ) -> AsyncIterator[asyncio.Task[None]]:
    """``service.start()`` under way in a task, yielded once the service has logged ``text`` — or
    once the start has ended, which the caller asserts on (it was to wait, not to end)."""
    seen = LogSeen(text)
    logger = logging.getLogger("atp_service.app.service")
    logger.addHandler(seen)
    try:
        starting = asyncio.create_task(service.start())
        logged = asyncio.ensure_future(seen.seen.wait())
        await asyncio.wait({starting, logged}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        logged.cancel()
        assert starting.done() or seen.seen.is_set(), f"{text!r} not logged in {limit_s}s"
        yield starting
    finally:
        logger.removeHandler(seen)


async def test_not_serving_while_waiting_for_redis_exits_1() -> None:
    service = AtpService(make_config(), f"redis://127.0.0.1:{held_port()}/0")
    async with starting_until_logged(service, "waiting for Redis") as starting:
        try:  # the gRPC server is up (health NOT_SERVING) before the first try
            status, out = await health(service.port)
        finally:
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
    assert (status, out.strip()) == (1, f"atp-service health: NOT_SERVING at 127.0.0.1:{service.port}")


def test_the_service_accepts_the_health_checks_variables_in_its_environment() -> None:
    """They sit beside the service's settings in one environment, which refuses unknown ATP_* names."""
    assert {ENV_SERVER_NAME, ENV_CLIENT_CERT, ENV_CLIENT_KEY} <= set(OTHER_TOOLS)
    ServiceConfig.from_env({ENV_SERVER_NAME: "atp.example", ENV_CLIENT_CERT: "c.pem", ENV_CLIENT_KEY: "c.key"})


async def test_nothing_listening_or_a_broken_setting_exits_1(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    status, out = await health(held_port())
    assert status == 1 and "no answer from 127.0.0.1:" in out
    status, out = await health(0)
    assert (status, out.strip()) == (1, "atp-service health: port: ATP_PORT=0 picks a port at start; "
                                        "give the address with --target")
    status, out = await health(held_port(), ATP_TLS_CERT=tmp_path / "missing.pem", ATP_TLS_KEY=tmp_path / "k")
    assert status == 1 and "ATP_TLS_CERT: cannot read" in out
    status, out = await health(held_port(), ATP_SHARDS="0")
    assert status == 1 and "ATP_SHARDS: must be within [1, 1024], got 0" in out  # the variable set
    ours, _ = certs
    status, out = await health(held_port(), **tls(ours), ATP_TLS_CLIENT_CA=ours / "ca.pem",
                               ATP_HEALTH_TLS_CERT=ours / "client.pem")
    assert (status, out.strip()) == (1, "atp-service health: ATP_HEALTH_TLS_CERT/ATP_HEALTH_TLS_KEY: give both "
                                        "or neither")


@pytest.mark.parametrize("gone", ["ATP_TLS_KEY", "ATP_TLS_CERT", "ATP_HEALTH_TLS_KEY"])
def test_a_file_the_probe_cannot_read_is_named_by_the_variable_that_gave_it(
        tmp_path: Path, certs: tuple[Path, Path], gone: str) -> None:
    """With mutual TLS and no health client certificate the probe presents the server's own (ATP_TLS_CERT,
    ATP_TLS_KEY); one it could not read was refused as ATP_HEALTH_TLS_KEY's, a variable nobody set."""
    ours, _ = certs
    env = {"ATP_PORT": "50051", "ATP_TLS_CERT": str(ours / "server.pem"), "ATP_TLS_KEY": str(ours / "server.key"),
           "ATP_TLS_CLIENT_CA": str(ours / "ca.pem")}
    if gone.startswith("ATP_HEALTH_"):
        env[ENV_CLIENT_CERT] = str(ours / "server.pem")
    env[gone] = str(tmp_path / "gone.pem")
    with pytest.raises(ProbeError, match=f"^{gone}: cannot read {tmp_path}/gone.pem"):
        probe_from(env)
