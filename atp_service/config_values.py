"""How an ``ATP_*`` variable's text becomes a setting's value, and the Redis key rule a setting is
checked against (the part of a key Redis Cluster hashes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OWNERSHIP_MODES = ("keyspace", "leases")
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def parse_value(name: str, type_name: str, raw: str) -> Any:
    """``raw`` as the type named ``type_name`` (the dataclass field's annotation)."""
    try:
        if type_name.startswith("tuple[str"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if type_name.startswith("tuple"):
            return tuple(int(part) for part in raw.split(","))
        if "bool" in type_name:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if "int" in type_name:
            return int(raw)
        if "float" in type_name:
            return float(raw)
        if "Path" in type_name:
            return Path(raw)
    except ValueError:
        raise ValueError(f"ATP_{name.upper()}: cannot read {raw!r} as {type_name}") from None
    return raw or None


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the first ``{...}`` with something inside, else all."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def check_redis(cfg: Any) -> None:
    """The Redis and ownership settings of a ``ServiceConfig``, checked together."""
    if cfg.redis_cluster and cfg.input_streams:
        streams = (*cfg.input_streams, cfg.dead_letter_stream, cfg.quarantine_stream)
        if len({hash_tag(name) for name in streams}) != 1:
            raise ValueError("input_streams, dead_letter_stream, quarantine_stream: on a Redis Cluster they "
                             "must share one hash tag, e.g. atp:{in}:pos,atp:{in}:wms, atp:{in}:dlq and "
                             f"atp:{{in}}:quarantine (got {', '.join(streams)})")
    if cfg.redis_wait_replicas < 0:
        raise ValueError(f"redis_wait_replicas: must be >= 0, got {cfg.redis_wait_replicas}")
    if cfg.redis_wait_timeout_ms <= 0 or (
            cfg.redis_wait_replicas and cfg.redis_wait_timeout_ms >= cfg.redis_timeout_s * 1000):
        raise ValueError(f"redis_wait_timeout_ms: must be positive and, with redis_wait_replicas, under "
                         f"redis_timeout_s, got {cfg.redis_wait_timeout_ms}")
    if cfg.ownership not in OWNERSHIP_MODES:
        raise ValueError(f"ownership: must be one of {OWNERSHIP_MODES}, got {cfg.ownership!r}")
    if cfg.ownership == "leases":
        _check_leases(cfg)


def _check_leases(cfg: Any) -> None:
    if not 300 <= cfg.lease_ms <= 600_000:
        raise ValueError(f"lease_ms: must be within [300, 600000], got {cfg.lease_ms}")
    if not cfg.advertise_address and (cfg.host in WILDCARDS or cfg.port == 0):
        raise ValueError(f"advertise_address: ownership=leases needs the host:port other processes reach this one "
                         f"at (host {cfg.host!r}, port {cfg.port} name none)")
    if cfg.estate is not None or cfg.demo:
        raise ValueError("estate: channel feeds are not served with ownership=leases yet; start without --estate "
                         "and with --no-demo")
