"""Who may call what: bearer tokens with roles, checked by a gRPC server interceptor.

The callers file (TOML) holds only SHA-256 hashes of tokens, never the tokens:

    [[callers]]
    name = "oms-eu"                 # shows in the audit log, never the token
    roles = ["oms"]
    token_sha256 = "9f86d081884c7d65..."

``atpctl token new NAME --roles oms`` makes a token and prints the entry. A caller sends
``authorization: Bearer <token>`` metadata. Roles: ``oms`` (reserve/confirm/release/fulfil and
reads), ``ingest`` (RecordEvents, LoadCounts), ``channel`` (WatchAvailability and reads), ``admin`` (safety
stock, estate reload and reads), ``peer`` (order steps between the service processes of one
keyspace, and facts from the input streams sent to their groups' owners: only a peer may send
``atp-quarantine-by-sender``, which has the facts it quarantines go unwritten and uncounted where they are
decided). Health checks and reflection stay open for probes and tools.
Every denial is ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``, counted in ``atp_auth_denied_total``, with
an audit log line — rate-limited, so that a flood of calls without a token cannot flood the log. A
denied call's request bytes are never parsed: the caller is refused before anything is read.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from atp_client import PERMISSIONS, new_token, token_hash
from atp_service.edge.errors import abort as abort_with
from atp_service.edge.errors import status_of
from atp_service.edge.ratelog import RateLimitedLog
from atp_service.intake.owners import SENDER_WRITES_KEY
from atp_service.metrics import EdgeMetrics
from reservation import DomainError, Reason

audit = logging.getLogger("atp_service.audit")

OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection",
})
MAX_TOKEN_BYTES = 512
PEER_ROLE = "peer"
"""The role of the service's own processes calling each other: alone may send ``SENDER_WRITES_KEY``."""
_CALLER_KEYS = frozenset({"name", "roles", "token_sha256"})
__all__ = ["PERMISSIONS", "AuthInterceptor", "Caller", "Callers", "CallersError", "load_callers", "new_token",
           "token_hash"]


class CallersError(ValueError):
    """The callers file is wrong; the message starts with the path of the offending key."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    roles: frozenset[str]

    def may_call(self, method: str) -> bool:
        return any(method in PERMISSIONS[role] for role in self.roles)


class Callers:
    def __init__(self, by_hash: dict[str, Caller]) -> None:
        self._by_hash = by_hash

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, token: str) -> Caller | None:
        # A dict lookup by SHA-256: the stored value is not the secret, so its timing reveals nothing useful.
        return self._by_hash.get(token_hash(token))


def load_callers(path: Path) -> Callers:
    try:
        data = tomllib.loads(path.read_bytes().decode())
    except UnicodeDecodeError as exc:  # a ValueError, not a CallersError: it would crash the start
        raise CallersError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CallersError(f"{path}: not valid TOML: {exc}") from None
    for key in data.keys() - {"callers"}:
        raise CallersError(f"{key}: not a key of the callers file (callers)")
    raw = data.get("callers")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise CallersError("callers: must be a non-empty array of tables ([[callers]])")
    by_hash: dict[str, Caller] = {}
    for n, entry in enumerate(raw):
        digest, caller = _entry(f"callers[{n}]", entry)
        if digest in by_hash:
            raise CallersError(f"callers[{n}].token_sha256: the same token is given to {by_hash[digest].name!r}")
        by_hash[digest] = caller
    return Callers(by_hash)


def _entry(where: str, entry: dict[str, Any]) -> tuple[str, Caller]:
    """One ``[[callers]]`` table checked: (its token's hash, the caller)."""
    for key in sorted(entry.keys() - _CALLER_KEYS):  # such as ``disabled = true``: a revocation not applied
        raise CallersError(f"{where}.{key}: not a key of a caller ({', '.join(sorted(_CALLER_KEYS))})")
    name, digest, roles = entry.get("name"), entry.get("token_sha256"), entry.get("roles")
    if not isinstance(name, str) or not name:
        raise CallersError(f"{where}.name: must be a non-empty string")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CallersError(f"{where}.token_sha256: must be 64 lowercase hex digits (atpctl token new)")
    # Strings first: an array or a table among the roles is unhashable, and ``in`` would raise TypeError.
    if not isinstance(roles, list) or not roles or any(not isinstance(r, str) or r not in PERMISSIONS
                                                       for r in roles):
        raise CallersError(f"{where}.roles: must list roles among {', '.join(PERMISSIONS)}")
    return digest, Caller(name, frozenset(roles))


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_BYTES:
                return token.strip()
            return ""  # present but malformed
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, callers: Callers, metrics: EdgeMetrics | None = None) -> None:
        self.callers = callers
        self._denied = (metrics or EdgeMetrics()).auth_denied
        # This service's own: a flood at another in the process (a test's, an embedder's) silenced its lines.
        self._audit_lines = {code: RateLimitedLog(audit, logging.WARNING, burst=20)
                             for code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = details.method.lstrip("/").partition("/")
        handler = await continuation(details)
        if service in OPEN_SERVICES or handler is None:
            return handler
        token = _bearer(details.invocation_metadata)
        if token is None:
            return self._deny(handler, method, "-", DomainError(
                "authorization: missing; send 'authorization: Bearer <token>' metadata", Reason.TOKEN_MISSING))
        caller = self.callers.lookup(token) if token else None
        if caller is None:
            return self._deny(handler, method, "-", DomainError(
                "authorization: unknown or malformed bearer token", Reason.TOKEN_INVALID))
        if not caller.may_call(method):
            roles = ", ".join(sorted(caller.roles))
            return self._deny(handler, method, caller.name, DomainError(
                f"caller {caller.name!r} (roles: {roles}) may not call {method}", Reason.ROLE_NOT_PERMITTED,
                metadata={"method": method, "roles": roles}))
        if PEER_ROLE not in caller.roles and any(k == SENDER_WRITES_KEY for k, _ in details.invocation_metadata or ()):
            roles = ", ".join(sorted(caller.roles))
            return self._deny(handler, method, caller.name, DomainError(
                f"caller {caller.name!r} (roles: {roles}) may not send {SENDER_WRITES_KEY} (a peer's: the facts "
                f"it quarantines go unwritten here)", Reason.ROLE_NOT_PERMITTED,
                metadata={"method": method, "roles": roles}))
        return handler

    def _deny(self, handler: grpc.RpcMethodHandler[Any, Any], method: str, caller: str,
              refusal: DomainError) -> grpc.RpcMethodHandler[Any, Any]:
        code = status_of(refusal)
        self._audit_lines[code].log("call denied", event="auth_denied", rpc=method, caller=caller, code=code.name,
                                    reason=refusal.message)
        self._denied.labels(code.name).inc()

        async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await abort_with(context, refusal)

        # No deserializer: gRPC hands over the raw bytes (of a unary request; a stream is never read),
        # so a caller who may not call learns nothing from, and costs nothing by, what it sends.
        serializer = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort, None, serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort, None, serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort, None, serializer)
        return grpc.unary_unary_rpc_method_handler(abort, None, serializer)
