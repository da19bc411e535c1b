"""The service's gRPC server: its options, services, port, TLS (optionally mutual) and caller check."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.keyspace import StartupError
from atp_service.app.peering import check_peer_token
from atp_service.app.tracing import Tracing
from atp_service.config import ServiceConfig
from atp_service.edge.auth import AuthInterceptor, CallersError, load_callers
from atp_service.edge.calls import CallBook
from atp_service.edge.fits import routing_refusal
from atp_service.edge.handlers import add_service, refusal_lines
from atp_service.edge.open_services import Health, Reflection
from atp_service.edge.peers import peers_handler
from atp_service.edge.servicer import AvailabilityServicer
from atp_service.edge.stalls import OpenStreams, StallLimit
from atp_service.engine.router import Engine
from atp_service.metrics import EdgeMetrics

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AvailabilityService"].full_name
MIN_PING_INTERVAL_MS = 5_000
"""The shortest interval between a caller's pings this server takes on a call with nothing sent: the other
processes of a keyspace ping their channels to this one (forward.PEER_KEEPALIVE_MS), clients their watches and
streams (atp_client ``KEEPALIVE_S``). Pings closer are strikes: a third ends the connection (GOAWAY too_many_pings).
gRPC's key is ``grpc.http2.min_ping_interval_without_data_ms``: the one set before (``min_recv_…``) is no key of
gRPC's, ignored, the server at gRPC's 5 minutes: a watch pinged every 20 s ended UNAVAILABLE "Too many pings"."""
KEEPALIVE_MS = 60_000
"""The server's own pings on a connection with a call open. gRPC's server default is 2 hours: a caller that
vanished (its host gone, its network cut, the TCP connection left open) while its stream sent nothing (a watch
of a quiet channel: no write for ``stream_stall_s`` to find stalled) kept the stream's place among
``max_watchers`` (or ``max_reserve_streams``), and a Redis read a second, for hours. The callers take them: a
client enforces no ping policy."""
KEEPALIVE_TIMEOUT_MS = 20_000
"""How long a server ping waits for its answer before the connection, and every call open on it, is ended."""


def new_server(cfg: ServiceConfig, interceptors: list[grpc.aio.ServerInterceptor[Any, Any]]) -> grpc.aio.Server:
    return grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Bounded: the queue gRPC keeps ahead of the service (see ServiceConfig.max_pending_calls).
        ("grpc.server.max_pending_requests", max(1, cfg.max_pending_calls // 2)),
        ("grpc.server.max_pending_requests_hard_limit", cfg.max_pending_calls),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # grpcio 1.85 times a ping out by this one (1 min)
        ("grpc.keepalive_permit_without_calls", 0),
        # gRPC's default (2) stops pinging once two pings went with no data sent: a quiet watch sends none.
        ("grpc.http2.max_pings_without_data", 0),
        # Bounded: a call's request bytes gRPC takes before the service reads them (ServiceConfig.stream_window_bytes).
        # gRPC's BDP probing would grow every stream's window to 4 MiB and more: a ReserveStream's caller writing
        # past the batches being decided had them all held unread here, each of max_reserve_streams streams.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", cfg.stream_window_bytes),
    ])


def add_services(server: grpc.aio.Server, servicer: AvailabilityServicer, health: Health, metrics: EdgeMetrics,
                 engine: Callable[[], Engine | None] | None, cfg: ServiceConfig, calls: CallBook) -> None:
    """Through ``handlers.add_service``, not the generated ``add_..._to_server``: bytes that are not
    a valid request answer INVALID_ARGUMENT with a quiet log line, on the open services too.
    ``engine`` (leased groups): the peers' internal service asks it for the order steps. Every
    stream, the open services' too, ends when its caller stops reading (``cfg.stream_stall_s``); the
    open services' streams (no token needed) are ``cfg.max_open_service_streams`` at most, together. Every
    call is booked in ``calls`` (a graceful stop waits for what can finish, then cuts the stalled calls)."""
    bad_requests, stalls = metrics.bad_requests, StallLimit(cfg.stream_stall_s, metrics.streams_stalled)
    open_streams = OpenStreams(cfg.max_open_service_streams, metrics.capacity_refusals)
    lines = refusal_lines()  # this service's bad_request lines, under one limit for its three services
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    names = (SERVICE_NAME, health_service.full_name, reflection.SERVICE_NAME)
    api = pb.DESCRIPTOR.services_by_name["AvailabilityService"]
    add_service(server, servicer, api, bad_requests, stalls, lines=lines, calls=calls)
    # atp_rpc_duration_seconds at 0 from the start for the code ATPCallsUnavailable reads, per method
    # (not every code): a Redis outage's first UNAVAILABLE answers would only create the series, and
    # rate() sees nothing of a series' first value.
    for method in api.methods:
        servicer.latency(method.name, "UNAVAILABLE")
    add_service(server, health, health_service, bad_requests, stalls, open_streams, lines, calls)
    add_service(server, Reflection(names, servicer.drain),
                reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"], bad_requests, stalls, open_streams,
                lines, calls)
    if engine is not None:
        server.add_generic_rpc_handlers((peers_handler(engine, calls),))


def bind(server: grpc.aio.Server, cfg: ServiceConfig) -> int:
    """The port the server listens on (TLS when configured); StartupError when it cannot."""
    credentials = server_credentials(cfg)  # its refusals are StartupErrors, a RuntimeError: not a port's
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        if (why := unusable_host(cfg.host)) is not None:  # the host at fault, not the port
            raise StartupError(f"host: cannot listen for gRPC on {cfg.host}:{cfg.port}: {why}; "
                               "choose another with --host / ATP_HOST (0.0.0.0: every interface)")
        raise StartupError(f"port: cannot listen for gRPC on {cfg.host}:{cfg.port} (in use?); "
                           "choose another with --port / ATP_PORT")
    return port


def unusable_host(host: str, first_only: bool = False) -> str | None:
    """Why no socket of this host can listen on ``host`` — empty, a name that does not resolve, an address
    not on this host — or None. Asked once a bind failed: such a host was reported as the port's fault ("in
    use?", "choose another with --port"), and the operator chased a port conflict that was not there.
    gRPC listens on every address a name resolves to (started where one binds), and on an IPv6 wildcard
    (``[::]``) without IPv6 on every IPv4 interface: each is tried, the host at fault only where none binds.
    ``first_only``: the first address alone, as a server listening on that one (the metrics endpoint's)."""
    if not host:
        return "an empty host is no address"
    name = host.removeprefix("[").removesuffix("]")  # gRPC takes an IPv6 address in brackets ([::])
    try:
        found = socket.getaddrinfo(name, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:  # gaierror; a name no IDNA label takes
        return str(getattr(exc, "strerror", None) or exc)
    if first_only:
        found = found[:1]
    elif any(family == socket.AF_INET6 and address[0] == "::" for family, _, _, _, address in found):
        found = [*found, (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", 0))]  # gRPC's fallback
    why = None
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)  # port 0: any free one, so only the address itself can be refused here
        except OSError as exc:  # EADDRNOTAVAIL, EAFNOSUPPORT
            why = why or str(exc.strerror or exc)
            continue
        return None
    return why


def advertised(cfg: ServiceConfig, port: int) -> str:
    """Where clients and peers reach this process (host:port); StartupError when GetRouting's answer,
    every group at that address, could not be sent within ``max_message_bytes``."""
    address = cfg.advertise_address or f"{cfg.host}:{port}"
    if (refusal := routing_refusal(cfg.shards, address, cfg.max_message_bytes)) is not None:
        raise StartupError(refusal)
    return address


def server_interceptors(cfg: ServiceConfig, tracing: Tracing | None,
                        metrics: EdgeMetrics) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Tracing (outermost: refusals are traced too), then the caller check when auth is on."""
    traced = [tracing.interceptor()] if tracing else []
    if not cfg.auth_on:
        log.warning("auth off (%s): any caller may call anything; not for production",
                    "demo mode" if cfg.auth == "auto" else "auth=off")
        return traced
    if cfg.callers_file is None:
        raise StartupError("callers_file: auth is on (not demo mode) and no callers file is given; pass "
                           "--callers-file FILE (entries from `atpctl token new NAME --roles oms`), "
                           "or --auth off on a trusted network")
    try:
        callers = load_callers(cfg.callers_file)
    except OSError as exc:
        raise StartupError(f"callers_file: cannot read {cfg.callers_file} ({exc.strerror})") from None
    except CallersError as exc:
        raise StartupError(f"callers_file: {cfg.callers_file}: {exc}") from None
    if cfg.ownership == "leases":
        check_peer_token(cfg, callers)
    log.info("auth on: %d callers from %s", len(callers), cfg.callers_file)
    return [*traced, AuthInterceptor(callers, metrics)]


def server_credentials(cfg: ServiceConfig) -> grpc.ServerCredentials | None:
    """TLS for the listening port when a certificate and key are configured; None: plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    try:
        key, cert = cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes()
        ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"tls: cannot read {exc.filename} ({exc.strerror})") from None
    _check_pair(cfg.tls_cert, cfg.tls_key)
    log.info("gRPC over TLS%s", " with client certificates (mutual TLS)" if ca else "")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _check_pair(cert: Path, key: Path) -> None:
    """gRPC refuses a certificate and key that do not make a pair only as a failed bind, which
    ``bind`` would report as a port in use: say what is wrong instead, naming both files."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:  # an encrypted key too: gRPC takes none
        raise StartupError(f"tls_cert/tls_key: {cert} and {key} are not a PEM certificate and its unencrypted "
                           f"private key ({exc.reason or exc})") from None
