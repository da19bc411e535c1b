"""Input-stream entries: their shapes, and an entry's fields decoded into a validated fact."""

from __future__ import annotations

import asyncio

from atp_service.intake.dead_letters import ANNOTATION_NAMES, ENTRY, TRIMMED, EntryRefused, Why, why_refused
from reservation import Fact, FactKind, InvalidArgument, Limits, Reason
from reservation import fact as make_fact

ENTRY_TIME_FIELD = "event_time_ms"
"""What an entry calls a fact's event time (``RecordEvents``: ``event_time``); refusals name it so."""
REQUIRED = ("event_id", "source", "kind", "sku", "location", "quantity", ENTRY_TIME_FIELD)
_REQUIRED_BYTES = tuple(name.encode() for name in REQUIRED)
_DOCUMENTED_ORDER = list(_REQUIRED_BYTES)
_KINDS = {k.name: k.value for k in FactKind}
_KNOWN = frozenset((*_REQUIRED_BYTES, b"reservation_id", *ANNOTATION_NAMES))
"""Every field an entry may have, besides a producer's own: those of the format, and the annotations
of a dead letter (one replayed as it was keeps them; they are not read)."""
PRODUCER_PREFIX = b"x-"
"""A field whose name starts with this is the producer's own (a trace id, a store id): not read."""
MAX_DIGITS = 19
"""Digits an integer field may have: any value past them is past every bound (int64, max_quantity)."""
Entry = tuple[str, bytes, list[bytes] | None]  # stream, entry id, flat [field, value, …] (None: deleted)
Read = tuple[str, bytes, list[bytes]]  # stream, entry id, its fields: an entry whose fact was decoded
Dead = tuple[str, bytes, list[bytes], Why]  # stream, entry id, its fields, why it is dead-lettered
Ahead = tuple[Fact, Read, InvalidArgument]  # a fact stamped past the allowed skew (E7), its entry, its refusal
DECODE_SLICE = 500
"""Entries decoded in one go: a read of thousands must not hold the event loop for tens of ms."""


async def decode_all(entries: list[Entry], now: int, limits: Limits, max_bytes: int
                     ) -> tuple[list[Fact], list[Read], list[Dead], list[Ahead]]:
    """The entries' facts with the entry each came from, the entries to dead-letter, and those
    whose facts are stamped past the allowed skew (E7), to be judged after their dedupe (E8)."""
    dead: list[Dead] = []
    ahead: list[Ahead] = []
    facts: list[Fact] = []
    read: list[Read] = []
    for n, (stream, entry_id, fields) in enumerate(entries):
        if n and n % DECODE_SLICE == 0:
            await asyncio.sleep(0)  # let other tasks (a stock-out to publish) in between slices
        if fields is None:  # a pending entry trimmed away: a kill -9 before its XACK may have applied it
            dead.append((stream, entry_id, [], TRIMMED))
            continue
        try:
            fact, refusal = decode_judged(fields, now, limits, max_bytes)
        except InvalidArgument as exc:
            dead.append((stream, entry_id, fields, why_refused(exc)))
            continue
        if refusal is not None:
            ahead.append((fact, (stream, entry_id, fields), refusal))
        else:
            facts.append(fact)
            read.append((stream, entry_id, fields))
    return facts, read, dead, ahead


def decode_fact(flat: list[bytes], now: int, limits: Limits, max_entry_bytes: int) -> Fact:
    """One input-stream entry (its flat field/value list) -> a validated fact, or InvalidArgument
    naming the field. Entries written in the documented field order skip the dict and the lookups.
    An entry of more than ``max_entry_bytes``, or of more names and values than that (empty ones count
    no bytes), is refused before anything of it is read."""
    size = sum(map(len, flat))
    if size > max_entry_bytes:
        raise InvalidArgument(ENTRY, f"{size} bytes, more than {max_entry_bytes} (limit ingest_max_entry_bytes)",
                              Reason.LIMIT_EXCEEDED, "ingest_max_entry_bytes")
    if len(flat) > max_entry_bytes:  # empty names and values count no bytes, yet Redis and the reader hold each
        raise InvalidArgument(ENTRY, f"{len(flat) // 2} fields, more names and values than {max_entry_bytes} "
                              "(limit ingest_max_entry_bytes)", Reason.LIMIT_EXCEEDED, "ingest_max_entry_bytes")
    if flat[0::2] == _DOCUMENTED_ORDER:
        raw, raw_reservation_id = flat[1::2], b""
    else:  # any other order, extra fields: the first problem in the documented order is named
        fields = as_fields(flat)
        _check_utf8(flat)  # before naming a missing field, as the entry as a whole is unreadable
        if len(fields) * 2 != len(flat):
            _check_once(flat)
        _check_known(fields)
        raw = [_field(fields, key) for key in _REQUIRED_BYTES]
        raw_reservation_id = fields.get(b"reservation_id", b"")
    # The two numbers stay bytes: int() reads them as it reads text, without a decode.
    raw_id, raw_source, raw_kind, raw_sku, raw_location, quantity, event_time = raw
    try:
        event_id, source, kind_text = raw_id.decode(), raw_source.decode(), raw_kind.decode()
        sku, location, reservation_id = raw_sku.decode(), raw_location.decode(), raw_reservation_id.decode()
        kind = _KINDS.get(kind_text)  # as documented, exactly: not ' sale ', nor '\u017fale' (upper-cased: SALE)
        if kind is None:
            raise InvalidArgument("kind", f"unknown fact kind {kind_text!r} (one of {', '.join(_KINDS)}, as written)")
        qty = _integer("quantity", quantity)
        at = _integer(ENTRY_TIME_FIELD, event_time)
        # Positional: this is the ingest hot path (keyword binding of ten arguments costs ~0.3 µs a fact).
        return make_fact(event_id, source, kind, sku, location, qty, at, reservation_id, now, limits, ENTRY_TIME_FIELD)
    except (UnicodeDecodeError, InvalidArgument):
        # Bytes not UTF-8 (the numbers' too) are told first, as in any other field order: an entry's dead letter,
        # its `_code` included, does not depend on the order of its fields.
        _check_utf8(flat)
        raise


def decode_judged(flat: list[bytes], now: int, limits: Limits, max_entry_bytes: int
                  ) -> tuple[Fact, InvalidArgument | None]:
    """``decode_fact``, but a fact refused only as stamped too far in the future (E7, by this process's
    clock) comes back with that refusal: it is refused only once its shard finds it was not applied
    already (E8) — by a process whose clock ran ahead, its entry left pending, read again here."""
    try:
        return decode_fact(flat, now, limits, max_entry_bytes), None
    except InvalidArgument as refusal:
        try:  # every other check as before: only the future one passes with this clock
            return decode_fact(flat, FAR_FUTURE, limits, max_entry_bytes), refusal
        except InvalidArgument:
            raise refusal from None


FAR_FUTURE = 1 << 62
"""A clock no event_time is ahead of (``decode_judged``)."""


def _check_utf8(flat: list[bytes]) -> None:
    """Every field that is read, name and value, is UTF-8. A producer's own (``x-``) is never read, nor
    a dead letter's annotations: their bytes (a binary trace id, a signature) are no fault of the entry."""
    try:
        for name, value in zip(flat[0::2], flat[1::2], strict=True):
            if not name.startswith(PRODUCER_PREFIX) and name not in ANNOTATION_NAMES:
                name.decode()
                value.decode()
    except UnicodeDecodeError:
        raise EntryRefused(ENTRY, "field values must be UTF-8", Reason.REQUEST_MALFORMED.name) from None


def _check_once(flat: list[bytes]) -> None:
    """XADD keeps a field named twice with each of its values: which one the source meant is not
    known, so such an entry is refused naming the field rather than read as its last value."""
    names = flat[0::2]
    for name in (*_REQUIRED_BYTES, b"reservation_id"):
        if names.count(name) > 1:
            given = (value for key, value in zip(names, flat[1::2], strict=True) if key == name)
            values = ", ".join(repr(value[:40].decode(errors="replace")) for value in given)
            raise EntryRefused(name.decode(), f"named {names.count(name)} times in the entry ({values}): "
                               "which one is meant is not known", "FIELD_REPEATED")


def _check_known(fields: dict[bytes, bytes]) -> None:
    """A field the format does not have is refused, naming it, rather than ignored: a typo of an
    optional one (``reservation`` for ``reservation_id``) would otherwise apply the fact without it
    — a SHIPMENT moving the stock and fulfilling no reservation, its units held committed for ever."""
    for name in fields:
        if name not in _KNOWN and not name.startswith(PRODUCER_PREFIX):
            raise InvalidArgument(name[:64].decode(errors="replace"), "not a field of the entry format "
                                  "(a producer's own field is named with the prefix 'x-')")


def _integer(name: str, raw: bytes) -> int:
    """A decimal integer as documented: an optional leading '-', then ASCII digits only. int() alone
    would also take ' 5 ', '+5', '1_000' and other digits than ASCII — forms no producer is told to
    send, which hide a producer's bug (a padded or formatted field) instead of naming it."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if digits.isdigit() and len(digits) <= MAX_DIGITS:  # bytes.isdigit: ASCII 0-9 only
        return int(raw)
    if digits.isdigit():
        raise InvalidArgument(name, f"{len(digits)} digits, more than {MAX_DIGITS}: out of range")
    raise InvalidArgument(name, f"not an integer: {raw[:40].decode(errors='replace')!r}")


def id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as numbers, to compare."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def as_fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A flat [field, value, …] list as a dict (the last value of a repeated field wins, as in XADD)."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def _field(fields: dict[bytes, bytes], key: bytes) -> bytes:
    value = fields.get(key)
    if value is None:
        raise InvalidArgument(key.decode(), "missing")
    return value
