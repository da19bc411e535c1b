"""Spans of the shard and log path, when tracing is on (``app.tracing``); nothing when it is off.

The engine and the storage hold a tracer or ``None``: off, a span is one ``is None`` test and a
``nullcontext``, and OpenTelemetry need not be installed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

NO_SPAN: AbstractContextManager[Any] = nullcontext()


def span(tracer: Any | None, name: str, **attributes: int | str) -> AbstractContextManager[Any]:
    """``tracer``'s span ``name`` with ``attributes`` (``atp.`` is prefixed to each name), or none."""
    if tracer is None:
        return NO_SPAN
    opened: AbstractContextManager[Any] = tracer.start_as_current_span(
        name, attributes={f"atp.{key}": value for key, value in attributes.items()})
    return opened


def tag_current(tracer: Any | None, **attributes: int | str) -> None:
    """Add ``attributes`` to the span in progress (the gRPC call's, in a handler)."""
    if tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in attributes.items():
        current.set_attribute(f"atp.{key}", value)
