"""``atpctl``'s argument types: each value checked to fit the field of the request it fills, before
anything is sent; else a usage error (exit 2) naming the argument."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

INT64_MAX = (1 << 63) - 1
"""What a proto int64 holds (quantities): a number past it cannot even be put in the request."""
MAX_DURATION_S = 315_576_000_000
"""The largest google.protobuf.Duration (about 10,000 years), in seconds."""


def key(text: str) -> tuple[str, str]:
    sku, sep, location = text.partition("@")
    if not sep or not sku or not location:
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION, got {text!r}")
    return sku, location


def name(text: str) -> str:
    """A caller's name in the callers file, which refuses an empty one (the whole file with it)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty: the callers file refuses an entry without a name")
    return text


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def within(text: str, low: int, high: int) -> int:
    """An integer in [low, high]: one the request's field can carry (the service judges the rest)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be within [{low}, {high}], got {value}")
    return value


def int64(text: str) -> int:
    return within(text, -INT64_MAX - 1, INT64_MAX)


def ttl(text: str) -> int:
    return within(text, -MAX_DURATION_S, MAX_DURATION_S)


def version(text: str) -> int:
    return within(text, 0, (1 << 64) - 1)


def count(text: str) -> int:
    return within(text, 0, INT64_MAX)


def seconds(text: str) -> float:
    """A deadline: a number of seconds above 0 (0 or less would fail every call DEADLINE_EXCEEDED,
    which reads as "unavailable, retry later")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def readable(text: str) -> Path:
    """A file that can be read: checked before anything is sent."""
    path = Path(text)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    return path


def contents(path: Path | None) -> bytes | None:
    """The bytes of a file given (None: not given)."""
    return path.read_bytes() if path else None


def cleared(report: Path) -> str | None:
    """Why ``report`` (where ``stock load`` writes the rows it could not apply) cannot be written (None: it can),
    an earlier run's removed (it must not pass for this one's). Found before any row is sent: found at the first
    rejected row, the calls before it were loaded, the load ended in a traceback and the report was lost."""
    try:
        report.unlink(missing_ok=True)
        report.open("w").close()  # made and removed: written at the first rejected row only
        report.unlink()
    except OSError as exc:
        return f"cannot write {str(report)!r}: {exc.strerror or exc}"
    return None


def line(text: str) -> tuple[str, str, int]:
    position, sep, qty = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION:QTY, got {text!r}")
    sku, location = key(position)
    try:
        return sku, location, int64(qty)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"quantity of {text!r}: {exc}") from None
