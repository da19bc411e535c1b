"""How atpctl answers: numbers as numbers, a table on a terminal, JSON when asked or piped, and
an exit status per class of failure."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from atp_client._client import RETRYABLE
from atp_client._errors import NOT_CONNECTED, OUTCOME_UNKNOWN, Conflict, InvalidRequest, typed

EXIT_OK = 0
EXIT_FAILED = 1
"""Any other failure (INTERNAL, UNKNOWN, a local error)."""
EXIT_USAGE = 2
"""Bad command line (argparse)."""
EXIT_INVALID = 3
"""INVALID_ARGUMENT, or an input file with a line or header that cannot be read (``BadInput``): the
request is wrong; do not retry it as it is."""
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
"""ALREADY_EXISTS or FAILED_PRECONDITION: the id's content or the reservation's state forbids it."""
EXIT_UNAVAILABLE = 6
"""UNAVAILABLE, RESOURCE_EXHAUSTED, CANCELLED, DEADLINE_EXCEEDED: retry later with the same ids."""
EXIT_DENIED = 7
"""UNAUTHENTICATED or PERMISSION_DENIED."""
EXIT_RESNAPSHOT = 8
"""watch: the version asked for is older than the channel stream keeps; watch again with --snapshot."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as a shell tool ends): a bulk command prints how far it got first."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away (``atpctl ... | head``): 128 + SIGPIPE, as a shell tool ends."""

S = grpc.StatusCode
_EXITS = {
    S.INVALID_ARGUMENT: EXIT_INVALID, S.OUT_OF_RANGE: EXIT_INVALID,
    S.NOT_FOUND: EXIT_NOT_FOUND,
    S.ALREADY_EXISTS: EXIT_CONFLICT, S.FAILED_PRECONDITION: EXIT_CONFLICT, S.ABORTED: EXIT_CONFLICT,
    S.UNAVAILABLE: EXIT_UNAVAILABLE, S.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE, S.CANCELLED: EXIT_UNAVAILABLE,
    S.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    S.UNAUTHENTICATED: EXIT_DENIED, S.PERMISSION_DENIED: EXIT_DENIED,
}
EXIT_HELP = """exit status: 0 done; 1 failed otherwise; 2 bad command line; 3 invalid request or input file;
4 not found; 5 conflict (id reused, reservation state); 6 unavailable or overloaded (retry later, same ids);
7 not authenticated or not permitted; 8 watch must start again from a snapshot; 130 interrupted (Ctrl-C);
141 stdout closed by its reader (see docs/OPERATIONS.md, atpctl's exit statuses)"""



class BadInput(ValueError):
    """An input file with a line or header the command cannot read as it must (the message names
    FILE:LINE and the field): nothing of the file is sent, and the exit status is ``EXIT_INVALID``."""


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_OPAQUE = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.rpc.Status", "google.protobuf.Any"}


def refusal(error: grpc.aio.AioRpcError) -> tuple[int, str]:
    """(exit status, one line for stderr) of a refused call."""
    refused = typed(error)  # its str: CODE REASON: message
    fields = "".join(f"\n  {v.field}: {v.description}" for v in refused.field_violations[1:])
    status = (EXIT_INVALID if isinstance(refused, InvalidRequest) else EXIT_CONFLICT if isinstance(refused, Conflict)
              else _EXITS.get(error.code(), EXIT_FAILED))
    return status, f"atpctl: {refused}{fields}"


CHANGES = frozenset({"reserve", "confirm", "release", "fulfil", "fulfill", "safety-stock", "reload-estate"})
"""atpctl's commands that change the service: a refusal of one that left it in doubt says so."""
IN_DOUBT_LINE = ("atpctl: the change was sent and may have been made (R7): run the same command again, with the "
                 "same ids, to learn what was decided")
INTERRUPTED_CHANGE = ("atpctl: interrupted: the change may have been sent and made (R7): run the same command again, "
                      "with the same ids, to learn what was decided")
"""A change interrupted (Ctrl-C) while its call may have been under way: whether it was sent is not known here."""


def in_doubt_after(error: grpc.aio.AioRpcError, retried: bool = False) -> bool:
    """Whether a refused change may still have been made (R7, R8): the service said so
    (``OUTCOME_UNKNOWN``), its deadline passed, or the call was lost without an answer of the
    service — unlike a refusal the service decided, or no connection at all (nothing sent). With
    gRPC's retries on (``retried``: atpctl's ``--retries``), a refusal gRPC retries is its last try's
    answer, which hides an earlier try lost mid-way (the process killed, its connection reset): in
    doubt too, whatever its reason says of that last try."""
    refused = typed(error)
    if refused.reason == NOT_CONNECTED or isinstance(refused, InvalidRequest | Conflict):
        return False  # nothing was sent, or read; or the id's decision (a retry of it answers the same)
    if retried and error.code() in RETRYABLE:
        return True
    if refused.reason:  # the service's own answer: it says
        return refused.reason == OUTCOME_UNKNOWN
    return error.code() in (S.DEADLINE_EXCEEDED, S.UNAVAILABLE, S.CANCELLED, S.INTERNAL, S.UNKNOWN)


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data in proto field names, 64-bit integers as numbers (proto JSON
    writes them as strings, which no reader of a number expects)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return _numbers(message.DESCRIPTOR, data)


def _numbers(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in the message's field order, 64-bit integers as ints, at every depth."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None:
            if field.message_type.full_name not in _OPAQUE and not field.message_type.GetOptions().map_entry:
                value = ([_numbers(field.message_type, v) for v in value] if field.is_repeated
                         else _numbers(field.message_type, value))
        elif field.type in _INT64:
            value = [int(v) for v in value] if field.is_repeated else int(value)
        out[field.name] = value
    return out


def emit(data: dict[str, Any] | Sequence[dict[str, Any]], as_json: bool, out: TextIO | None = None) -> None:
    """JSON, or a readable table (a list of records) / key-value lines (one record)."""
    out = out or sys.stdout
    if as_json:
        print(json.dumps(data, indent=2), file=out)
    elif isinstance(data, dict):
        _record(data, out)
    else:
        _table(list(data), out)


def answer(msg: Message | Sequence[Message] | dict[str, Any], json_asked: bool) -> None:
    """A command's answer: a table on a terminal, JSON with --json (``json_asked``) or when stdout is not a terminal."""
    if isinstance(msg, Sequence):
        data: Any = [plain(m) for m in msg]
    elif isinstance(msg, Message):
        data = plain(msg)
    else:
        data = msg
    emit(data, json_asked or not sys.stdout.isatty())


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _table(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)


def _record(data: dict[str, Any], out: TextIO) -> None:
    scalars = {k: v for k, v in data.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
    width = max((len(k) for k in scalars), default=0)
    for key, value in scalars.items():
        if isinstance(value, dict) and value and all(not isinstance(v, dict | list) for v in value.values()):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key.ljust(width)}  {_cell(value)}", file=out)
    for key, value in data.items():
        if key not in scalars:
            print(f"\n{key}:", file=out)
            _table(value, out)
