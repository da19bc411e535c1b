"""Redis replies as the service reads them, whatever the protocol (RESP2 or RESP3) and whether the
client decodes responses: the one place that knows their shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def as_text(value: Any) -> str:
    """A Redis reply value as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def seq_of(entry_id: Any) -> int:
    """The number a service-chosen stream id ``<n>-0`` carries (a log seq, a channel version)."""
    return int(as_text(entry_id).split("-", 1)[0])


def stream_entries(reply: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(stream, entry id, fields) of an XREAD / XREADGROUP reply, in order: the RESP2 list form,
    or the RESP3 map form, where a stream's entries may come wrapped in one more list."""
    streams = reply.items() if isinstance(reply, dict) else (reply or ())
    for stream, entries in streams:
        if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], list):
            entries = entries[0]
        for entry_id, fields in entries:
            yield stream, entry_id, fields
