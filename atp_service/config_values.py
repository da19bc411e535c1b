"""How an ``ATP_*`` variable's text becomes a setting's value, and the Redis key rule a setting is
checked against (the part of a key Redis Cluster hashes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
