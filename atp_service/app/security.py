"""The gRPC server's own security: TLS (optionally mutual) and the caller check."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from atp_service.app.keyspace import StartupError
from atp_service.app.tracing import Tracing
from atp_service.config import ServiceConfig
from atp_service.edge.auth import AuthInterceptor, CallersError, load_callers
from atp_service.metrics import EdgeMetrics

log = logging.getLogger(__name__)


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
    log.info("gRPC over TLS%s", " with client certificates (mutual TLS)" if ca else "")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
