"""How every locust process reaches the service: plaintext or TLS (mutual TLS with a client
certificate), and a bearer token on every call when one is given.

Blocking gRPC (locust's users run on gevent), so the token goes in through a client interceptor of
the blocking API: call credentials would do it only on TLS channels, and a staging service may
check tokens behind a TLS-terminating proxy.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from atp_client import reconnect_options, tls_credentials


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    """A call's details with metadata added (grpc.ClientCallDetails is abstract)."""


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """``authorization: Bearer …`` on every call of every kind."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _with(self, d: Any) -> _Details:
        return _Details(d.method, d.timeout, [*(d.metadata or ()), self._pair], d.credentials,
                        d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with(details), requests)


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to connect; ``open()`` makes a channel (the caller closes it)."""

    target: str
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None
    token: str | None = None

    @property
    def secure(self) -> bool:
        return self.ca is not None or self.cert is not None

    def open(self) -> grpc.Channel:
        # the shipped client's bound on the wait between attempts to connect: a user's channel reaches a service
        # restarted mid-run within about a second, as an OMS on AtpClient does, not gRPC's own up to 120 s
        options = reconnect_options()
        if self.secure:
            options += [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
            channel = grpc.secure_channel(self.target, tls_credentials(self.ca, self.cert, self.key), options=options)
        else:
            channel = grpc.insecure_channel(self.target, options=options)
        return grpc.intercept_channel(channel, _Bearer(self.token)) if self.token else channel


def _read(path: Any) -> bytes | None:
    # an option left empty (the web UI's form, an empty variable) is no option
    return Path(path).read_bytes() if path else None


def check_options(options: Any) -> None:
    """Raises ValueError on connection options that cannot work: a certificate without its key, a
    file that cannot be read (locust starts users before anything else would notice)."""
    if bool(options.client_cert) != bool(options.client_key):
        raise ValueError("--client-cert and --client-key: give both or neither")
    for flag, path in (("--tls-ca", options.tls_ca), ("--client-cert", options.client_cert),
                       ("--client-key", options.client_key), ("--token-file", options.token_file)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag}: no such file: {path}")


def connection_of(options: Any, host: str | None) -> Connection:
    """The connection the options describe, to ``host`` (locust's ``--host``, HOST:PORT)."""
    if not host:
        raise ValueError("pass --host HOST:PORT of the ATP service")
    check_options(options)
    token = options.token or (_read(options.token_file) or b"").decode().strip() or None
    return Connection(target=host.removeprefix("grpc://"), ca=_read(options.tls_ca), cert=_read(options.client_cert),
                      key=_read(options.client_key), server_name=options.tls_server_name or None, token=token)
