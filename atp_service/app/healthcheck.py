"""``python -m atp_service.app.healthcheck``: exit 0 when the service on this host answers the gRPC
health check (``grpc.health.v1``) ``SERVING``, 1 otherwise — the container's HEALTHCHECK and the
Kubernetes exec probes.

It reads the settings the service itself runs with, so one environment serves both:

- where to call: ``ATP_HOST`` (a wildcard such as ``0.0.0.0`` means loopback) and ``ATP_PORT``;
- plaintext when the service has no certificate (``ATP_TLS_CERT``/``ATP_TLS_KEY`` unset);
- TLS: the certificate the service presents is checked against ``ATP_TLS_CERT`` itself — the check
  trusts exactly that certificate, whichever CA signed it — for the name ``ATP_HEALTH_SERVER_NAME``
  (default: the host of ``ATP_ADVERTISE_ADDRESS`` when set, else the address called), which must be
  one the certificate names;
- mutual TLS (``ATP_TLS_CLIENT_CA`` set): the check presents ``ATP_HEALTH_TLS_CERT`` and
  ``ATP_HEALTH_TLS_KEY``, a client certificate signed by that CA; unset, the service's own
  certificate and key, which must then allow client authentication (as between the processes of a
  keyspace).

No token: the health service is open to every caller, auth on or off. The service says
``NOT_SERVING`` while it waits for Redis and recovers, and from the first moment of a stop; every
failure exits 1 with one line on stderr saying why (Docker reserves exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_service.config import ServiceConfig

HEALTHY, UNHEALTHY = 0, 1
DEFAULT_TIMEOUT_S = 3.0
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
ENV_SERVER_NAME = "ATP_HEALTH_SERVER_NAME"
ENV_CLIENT_CERT = "ATP_HEALTH_TLS_CERT"
ENV_CLIENT_KEY = "ATP_HEALTH_TLS_KEY"


class ProbeError(Exception):
    """The check cannot be made as configured; the message says which setting."""


@dataclass(frozen=True)
class Probe:
    """One health call: where to, and with what credentials (None: plaintext)."""

    target: str
    credentials: grpc.ChannelCredentials | None = None
    server_name: str | None = None
    hint: str = ""
    """Said after a failure to connect: what the settings may have got wrong."""


def _host_port(host: str, port: int) -> str:
    host = "127.0.0.1" if host in WILDCARDS else host
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _host_of(address: str) -> str:
    host = address.rpartition(":")[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProbeError(f"{setting}: cannot read {path} ({exc.strerror})") from None


def probe_from(env: Mapping[str, str], target: str | None = None) -> Probe:
    """The call the service configured by ``env`` (``ATP_*``) answers, at ``target`` if given."""
    try:
        cfg = ServiceConfig.from_env(dict(env))
    except ValueError as exc:
        raise ProbeError(str(exc)) from None
    if target is None:
        if cfg.port == 0:
            raise ProbeError("port: ATP_PORT=0 picks a port at start; give the address with --target")
        target = _host_port(cfg.host, cfg.port)
    if cfg.tls_cert is None or cfg.tls_key is None:
        return Probe(target)
    name = env.get(ENV_SERVER_NAME) or (_host_of(cfg.advertise_address) if cfg.advertise_address else None)
    hint = f" (TLS: {ENV_SERVER_NAME} must be a name on {cfg.tls_cert}; now {name or target.rpartition(':')[0]}"
    key = chain = None
    if cfg.tls_client_ca is not None:
        if bool(env.get(ENV_CLIENT_CERT)) != bool(env.get(ENV_CLIENT_KEY)):
            raise ProbeError(f"{ENV_CLIENT_CERT}/{ENV_CLIENT_KEY}: give both or neither")
        cert_path = Path(env.get(ENV_CLIENT_CERT) or cfg.tls_cert)
        # Each file named by the variable that gave it: the server's own, where no health client's is set.
        key = _read(Path(env.get(ENV_CLIENT_KEY) or cfg.tls_key), ENV_CLIENT_KEY if env.get(ENV_CLIENT_KEY)
                    else "ATP_TLS_KEY")
        chain = _read(cert_path, ENV_CLIENT_CERT if env.get(ENV_CLIENT_CERT) else "ATP_TLS_CERT")
        hint += f"; mutual TLS: {cert_path} must be signed by {cfg.tls_client_ca} and allow client authentication"
    root = _read(cfg.tls_cert, "ATP_TLS_CERT")
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    return Probe(target, credentials, name, hint + ")")


def check(probe: Probe, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(SERVING?, what was found)."""
    options = [("grpc.ssl_target_name_override", probe.server_name)] if probe.server_name else []
    channel = (grpc.secure_channel(probe.target, probe.credentials, options=options) if probe.credentials
               else grpc.insecure_channel(probe.target))
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"no answer from {probe.target}: {code.name if code else 'error'}: {details}{probe.hint}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, f"{status} at {probe.target}"


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m atp_service.app.healthcheck",
        description="Exit 0 when the ATP service here reports SERVING (grpc.health.v1), else 1. "
                    "Reads the service's ATP_* settings: host, port, TLS, mutual TLS.")
    parser.add_argument("--target", help="host:port to call (default: from ATP_HOST and ATP_PORT)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of the call in seconds")
    args = parser.parse_args(argv)
    try:
        probe = probe_from(os.environ if env is None else env, args.target)
    except ProbeError as exc:
        print(f"atp-service health: {exc}", file=sys.stderr)
        return UNHEALTHY
    serving, found = check(probe, args.timeout)
    print(f"atp-service health: {found}", file=sys.stdout if serving else sys.stderr)
    return HEALTHY if serving else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
