"""What one service process needs to call the others of its keyspace (``ownership = leases``): the
TLS material to verify them (and to present, under mutual TLS) and its bearer token."""

from __future__ import annotations

from pathlib import Path

from atp_service.app.keyspace import StartupError
from atp_service.config import ServiceConfig
from atp_service.edge.auth import Callers


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{setting}: cannot read {path} ({exc.strerror})") from None


def peer_tls(cfg: ServiceConfig) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """(root the peers' certificates are verified with, (key, certificate) shown to them); (None,
    None) without TLS: plaintext between processes, as with callers."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None, None
    ca = cfg.peer_tls_ca or cfg.tls_client_ca or cfg.tls_cert
    root = _read(ca, "peer_tls_ca")
    identity = (_read(cfg.tls_key, "tls_key"), _read(cfg.tls_cert, "tls_cert")) if cfg.tls_client_ca else None
    return root, identity


def peer_token(cfg: ServiceConfig) -> str | None:
    """The token sent with order steps to the other processes (auth on: required)."""
    if cfg.peer_token_file is None:
        if cfg.auth_on and cfg.ownership == "leases":
            raise StartupError("peer_token_file: ownership=leases with auth on needs the token of a caller with "
                               "the peer role (`atpctl token new NAME --roles peer`), sent to the other processes")
        return None
    raw = _read(cfg.peer_token_file, "peer_token_file")
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError as exc:  # a traceback and exit status 1 otherwise: restarted for ever
        raise StartupError(f"peer_token_file: {cfg.peer_token_file} is not UTF-8 text (byte {exc.start})") from None
    if not token:
        raise StartupError(f"peer_token_file: {cfg.peer_token_file} is empty")
    return token


def check_peer_token(cfg: ServiceConfig, callers: Callers) -> None:
    """The peer token must be one the other processes let send order steps and facts: a caller with
    the ``peer`` role in this process's callers file (the processes of a keyspace share it). A token
    they refuse would otherwise be found out only at the first order spanning processes, left
    undecided with its units held while every process reports SERVING."""
    token = peer_token(cfg)
    caller = callers.lookup(token) if token else None
    if caller is None or "peer" not in caller.roles:
        whose = "unknown to" if caller is None else f"of {caller.name!r}, without the peer role, in"
        raise StartupError(f"peer_token_file: the token in {cfg.peer_token_file} is not a caller with the peer "
                           f"role: it is {whose} callers_file {cfg.callers_file} (`atpctl token new NAME "
                           "--roles peer`, and its entry in every process's callers file)")
