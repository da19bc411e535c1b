"""The estate file as the service reads it, at start and at each reload: refused with its path and
the key at fault (``StartupError``, whose message starts ``estate: ``)."""

from __future__ import annotations

from pathlib import Path

from atp_service.app.keyspace import StartupError
from atp_service.channels.estate import Estate, EstateError, load_estate
from reservation import Limits


def read_estate(path: Path | None, limits: Limits) -> Estate:
    """The estate at ``path`` (None: none, no channels)."""
    if path is None:
        return Estate({}, {}, {})
    try:
        return load_estate(path, limits)
    except OSError as exc:
        raise StartupError(f"estate: cannot read {path} ({exc.strerror})") from None
    except EstateError as exc:
        raise StartupError(f"estate: {path}: {exc}") from None
