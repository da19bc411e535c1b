"""The gRPC server's start-up refusals name the setting at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service import AtpService
from atp_service.app.certs import make_certs
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
