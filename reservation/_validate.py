"""Turn raw request values into validated commands, or an error naming the field.

Nothing here touches state: a request that fails validation changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ._bulk import CountRows
from ._errors import InvalidArgument, Reason
from ._limits import Limits
from ._model import Fact, FactKind, LineRequest, ReserveCommand

_FACT_KINDS = {k.value: k for k in FactKind}
LAST_EVENT_TIME_MS = 253_402_300_799_999
"""The last event time a fact may carry: 9999-12-31T23:59:59.999Z, the last instant of a protobuf ``Timestamp``.
A fact judged against a clock that is not this process's (``intake.entries.FAR_FUTURE``: one stamped ahead, maybe
applied by a process whose clock ran ahead) is refused past it: else it was sent on to its group's owner in a
``RecordEvents`` that could not be built, and its entry, and every fact read with it for that owner, stayed pending."""


NOT_PRINTABLE = "must be printable (no control, format, separator or unassigned character; ASCII space is fine)"
"""Why an id with a character ``str.isprintable`` refuses is refused: names what is refused, not only controls."""


def check_id(field: str, value: str, limits: Limits, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "must not be empty")
        return value
    if len(value) > limits.max_id_length // 4 and len(value.encode()) > limits.max_id_length:
        raise InvalidArgument(field, f"longer than {limits.max_id_length} bytes (limit max_id_length)",
                              Reason.LIMIT_EXCEEDED, "max_id_length")
    if not value.isprintable():
        raise InvalidArgument(field, NOT_PRINTABLE)
    return value


def _plain_ids(limits: Limits, *values: str, empty: bool = False) -> bool:
    """Whether every one of ``values`` passes ``check_id`` for sure, in one go (the hot path): not
    empty (unless ``empty``), within max_id_length even at 4 UTF-8 bytes a character, printable.
    False says only "check them one by one": that names the field at fault."""
    # Whole-tuple builtins, no loop in Python: this runs twice for every Reserve.
    if max(map(len, values)) > limits.max_id_length // 4 or not (empty or all(values)):
        return False
    return "".join(values).isprintable()


def check_quantity(field: str, value: int, limits: Limits) -> int:
    if value <= 0:
        raise InvalidArgument(field, f"must be positive, got {value}")
    if value > limits.max_quantity:
        raise InvalidArgument(field, f"{value} exceeds the limit max_quantity={limits.max_quantity}")
    return value


def check_safety_stock(field: str, value: object, limits: Limits) -> int:
    """Q4: units protected at a position, within [0, max_quantity] (with max_on_hand, Q5 cannot
    leave int64). Where a safety stock enters: SetSafetyStock and the estate file."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(field, "must be a non-negative integer")
    if value > limits.max_quantity:
        raise InvalidArgument(field, f"must be at most {limits.max_quantity} (limit max_quantity)")
    return value


def line_requests(
    lines: Iterable[tuple[str, str, int]], limits: Limits, *, field: str = "lines", required: bool = True
) -> tuple[LineRequest, ...]:
    """Validate lines and sum those naming the same position (R1), keeping first-seen order."""
    if isinstance(lines, list) and len(lines) == 1:  # the common case, without the summing dict
        sku, location, quantity = lines[0]
        if not (_plain_ids(limits, sku, location) and 0 < quantity <= limits.max_quantity):
            # Which field is at fault, named: only here, where a field name costs a format each.
            check_id(f"{field}[0].sku", sku, limits)
            check_id(f"{field}[0].location", location, limits)
            check_quantity(f"{field}[0].quantity", quantity, limits)
        return (LineRequest(sku, location, quantity),)
    summed: dict[tuple[str, str], int] = {}
    count = 0
    for n, (sku, location, quantity) in enumerate(lines):
        if n >= limits.max_lines:
            raise InvalidArgument(field, f"more than {limits.max_lines} lines (limit max_lines)", Reason.LIMIT_EXCEEDED,
                                  "max_lines")
        check_id(f"{field}[{n}].sku", sku, limits)
        check_id(f"{field}[{n}].location", location, limits)
        check_quantity(f"{field}[{n}].quantity", quantity, limits)
        key = (sku, location)
        total = summed.get(key, 0) + quantity
        if total > limits.max_quantity:
            raise InvalidArgument(f"{field}[{n}].quantity", f"lines for {sku}@{location} sum past max_quantity")
        summed[key] = total
        count += 1
    if required and not count:
        raise InvalidArgument(field, "at least one line is required")
    return tuple(LineRequest(sku, loc, qty) for (sku, loc), qty in summed.items())


_SUMMED_LINE = re.compile(r"lines\[(\d+)\]")


def as_asked(error: InvalidArgument, asked: Sequence[tuple[str, str, int]]) -> InvalidArgument:
    """``error``, a refusal of the lines ``line_requests`` summed from ``asked`` (a position's lines summed, first seen
    first, R1), naming its line by its place in ``asked``: a position's first line there. Named by its place among the
    summed lines, a line after two naming one position was told as the line after the first of those, not at fault."""
    named = _SUMMED_LINE.match(error.field)
    firsts: dict[tuple[str, str], int] = {}
    for n, (sku, location, _) in enumerate(asked):
        firsts.setdefault((sku, location), n)
    places = list(firsts.values())  # the summed lines' order
    if named is None or not int(named[1]) < len(places) or places[int(named[1])] == int(named[1]):
        return error
    field = f"lines[{places[int(named[1])]}]{error.field[named.end():]}"
    return InvalidArgument(field, error.problem, error.reason, error.metadata.get("limit", ""))


def reserve_command(
    *,
    reservation_id: str,
    order_ref: str,
    channel: str,
    lines: Iterable[tuple[str, str, int]],
    ttl_seconds: int,
    allow_partial: bool,
    limits: Limits,
) -> ReserveCommand:
    checked: tuple[LineRequest, ...] | None = None
    if isinstance(lines, list) and len(lines) == 1:  # most Reserves: the ids of both checks in one go
        sku, location, quantity = lines[0]
        if (reservation_id and sku and location and 0 < quantity <= limits.max_quantity
                and _plain_ids(limits, reservation_id, order_ref, channel, sku, location, empty=True)):
            checked = (LineRequest(sku, location, quantity),)
    # Not sure yet: field by field, in the order that names the first field at fault.
    if checked is None and not (reservation_id and _plain_ids(limits, reservation_id, order_ref, channel, empty=True)):
        check_id("reservation_id", reservation_id, limits)
        check_id("order_ref", order_ref, limits, required=False)
        check_id("channel", channel, limits, required=False)
    ttl = ttl_seconds or limits.default_ttl_seconds
    if not limits.min_ttl_seconds <= ttl <= limits.max_ttl_seconds:
        raise InvalidArgument(
            "ttl", f"{ttl_seconds}s is outside [{limits.min_ttl_seconds}s, {limits.max_ttl_seconds}s] "
                   "(limits min_ttl_seconds, max_ttl_seconds)")
    checked = checked or line_requests(lines, limits)
    return ReserveCommand(reservation_id, order_ref, channel, checked, ttl * 1000, allow_partial, not ttl_seconds)


def reserve_one_line(reservation_id: str, order_ref: str, channel: str, sku: str, location: str, quantity: int,
                     ttl_seconds: int, allow_partial: bool, limits: Limits) -> ReserveCommand:
    """``reserve_command`` of a Reserve of one line (most of them), its values as the request has them:
    every check in one go where all pass for sure, else ``reserve_command``, which names the first
    field at fault."""
    ttl = ttl_seconds or limits.default_ttl_seconds
    # Comparisons one by one, not chained: a chain costs the interpreter a swap and a copy each.
    if reservation_id and sku and location and quantity > 0 and quantity <= limits.max_quantity and \
            ttl >= limits.min_ttl_seconds and ttl <= limits.max_ttl_seconds:
        ids = "".join((reservation_id, order_ref, channel, sku, location))
        # ``check_id`` of each, at once: printable (so no lone surrogate: it encodes), and each within
        # max_id_length bytes, as all of them together are.
        if ids.isprintable() and len(ids.encode()) <= limits.max_id_length:
            return ReserveCommand(reservation_id, order_ref, channel, (LineRequest(sku, location, quantity),),
                                  ttl * 1000, allow_partial, not ttl_seconds)
    return reserve_command(reservation_id=reservation_id, order_ref=order_ref, channel=channel,
                           lines=[(sku, location, quantity)], ttl_seconds=ttl_seconds, allow_partial=allow_partial,
                           limits=limits)


def partial_lines(
    lines: Iterable[tuple[str, str, int]], operation_id: str, limits: Limits
) -> tuple[LineRequest, ...]:
    """Lines of a partial release/fulfil; a partial operation needs an id so a retry is harmless (R5)."""
    checked = line_requests(lines, limits, required=False)
    check_id("operation_id", operation_id, limits, required=bool(checked))
    return checked


def fact(
    event_id: str,
    source: str,
    kind: int,
    sku: str,
    location: str,
    quantity: int,
    event_time: int,
    reservation_id: str,
    now: int,
    limits: Limits,
    time_field: str = "event_time",
) -> Fact:
    """A checked fact; ``time_field`` is what the caller's format calls the event time (errors name it)."""
    # The ingest hot path: four short printable ids are checked in one go; anything else goes
    # through check_id one by one, which names the first field at fault.
    plain = _plain_ids(limits, event_id, source, sku, location)
    if not plain:
        check_id("event_id", event_id, limits)
        check_id("source", source, limits)
    fact_kind = _FACT_KINDS.get(kind)
    if fact_kind is None:
        raise InvalidArgument("kind", f"unknown fact kind {kind}")
    if not plain:
        check_id("sku", sku, limits)
        check_id("location", location, limits)
    if fact_kind == FactKind.ADJUST:
        if quantity == 0 or abs(quantity) > limits.max_quantity:
            raise InvalidArgument("quantity", f"ADJUST needs a non-zero delta within ±{limits.max_quantity}")
    elif fact_kind == FactKind.COUNT:
        if not 0 <= quantity <= limits.max_quantity:
            raise InvalidArgument("quantity", f"COUNT must be within [0, {limits.max_quantity}]")
    else:
        check_quantity("quantity", quantity, limits)
    if event_time <= 0:
        raise InvalidArgument(time_field, "must be set, after 1970-01-01")
    if event_time > now + limits.fact_future_skew_ms:  # E7
        raise InvalidArgument(
            time_field,
            f"{event_time} ms is more than {limits.fact_future_skew_ms} ms ahead of the service clock ({now})",
        )
    if event_time > LAST_EVENT_TIME_MS:  # E7 whatever the clock: a fact the API cannot carry is no fact
        raise InvalidArgument(time_field, f"{event_time} ms is past {LAST_EVENT_TIME_MS} ms (9999-12-31), the last "
                              "time a Timestamp carries")
    if reservation_id:
        if fact_kind != FactKind.SHIPMENT:
            raise InvalidArgument("reservation_id", f"only SHIPMENT facts may name a reservation, not {fact_kind.name}")
        check_id("reservation_id", reservation_id, limits)
    return Fact(event_id, source, fact_kind, sku, location, quantity, event_time, reservation_id)


AHEAD = "ahead of the service clock"
"""How a row's refusal as stamped in the future (E7) says it: ``edge/load.py`` asks whether it was loaded."""


def count_rows(source: str, skus: Sequence[str], locations: Sequence[str], columns: Sequence[bytes], now: int,
               limits: Limits) -> tuple[CountRows, dict[int, InvalidArgument]]:
    """A LoadCounts block as rows to load, and why each other row is refused (by row number; the
    field is the column, and the problem names no value of the row, so rows refused alike can be
    answered together). ``columns``: sku_index, location_index, on_hand, as_of as packed
    little-endian bytes. A fault of the whole block (its source, its size, columns of unequal
    length) refuses the call (``count_block``)."""
    n = count_block(source, skus, locations, columns, limits)
    si, li = (np.frombuffer(c, dtype="<u4").astype(np.uint32) for c in columns[:2])
    qty, at = (np.frombuffer(c, dtype="<i8").astype(np.int64) for c in columns[2:])
    problems = _row_problems(skus, locations, si, li, qty, at, now, limits)
    bad = np.zeros(n, dtype=np.bool_)
    for mask, _ in problems:
        bad |= mask
    errors: dict[int, InvalidArgument] = {}
    for mask, problem in reversed(problems):  # the first field at fault names the row's refusal
        for i in np.flatnonzero(mask).tolist():
            errors[i] = problem(i)
    good = ~bad
    return CountRows(source, skus, locations, si[good], li[good], qty[good], at[good]), errors


def count_block(source: str, skus: Sequence[str], locations: Sequence[str], columns: Sequence[bytes],
                limits: Limits) -> int:
    """The number of rows of a LoadCounts block (``count_rows``' columns), or the refusal of the whole block: its
    source, its size (no rows, or past ``max_rows_per_load``), columns of unequal length, a dictionary naming one
    twice. Needs no clock: a block at fault is told so before anything the service's state decides (reasons in
    precedence order)."""
    check_id("source", source, limits)
    sizes = (4, 4, 8, 8)
    for name, data, size in zip(_COLUMNS, columns, sizes, strict=True):
        if len(data) % size:
            raise InvalidArgument(name, f"{len(data)} bytes is not a whole number of {size}-byte values")
    n = len(columns[3]) // 8
    if n > limits.max_rows_per_load:
        raise _too_many_rows(_COLUMNS, n, limits)
    for name, data, size in zip(_COLUMNS, columns, sizes, strict=True):
        if len(data) // size != n:
            raise InvalidArgument(name, f"{len(data) // size} values for {n} rows (as_of has one per row)")
    if not n:  # a caller's bug (a file read as empty): answered OK, nothing loaded, it looked like a load
        raise _no_rows(_COLUMNS)
    for name, dictionary in (("skus", skus), ("locations", locations)):
        if len(dictionary) > n or len(set(dictionary)) != len(dictionary):
            raise InvalidArgument(name, "each must appear once, and no more of them than rows")
    return n


_COLUMNS = ("sku_index", "location_index", "on_hand", "as_of")


def _too_many_rows(columns: tuple[str, ...], n: int, limits: Limits) -> InvalidArgument:
    """A block past ``max_rows_per_load``, naming every per-row column: the rows are all of them
    together, so naming one (``as_of``) would read as a fault of that column's values."""
    refusal = InvalidArgument(", ".join(columns), f"{n} rows exceed the limit max_rows_per_load="
                              f"{limits.max_rows_per_load}: send the block in smaller calls",
                              Reason.LIMIT_EXCEEDED, "max_rows_per_load")
    refusal.fields = columns  # one FieldViolation per column
    return refusal


def _no_rows(columns: tuple[str, ...]) -> InvalidArgument:
    """A block of no rows, naming every per-row column (as ``_too_many_rows`` does)."""
    refusal = InvalidArgument(", ".join(columns), "a block of no rows: at least one row is required")
    refusal.fields = columns  # one FieldViolation per column
    return refusal


RowProblem = tuple[npt.NDArray[np.bool_], Callable[[int], InvalidArgument]]


def _row_problems(skus: Sequence[str], locations: Sequence[str], si: npt.NDArray[np.uint32],
                  li: npt.NDArray[np.uint32], qty: npt.NDArray[np.int64], at: npt.NDArray[np.int64], now: int,
                  limits: Limits) -> list[RowProblem]:
    """Each check as (rows failing it, the refusal of such a row), in the order fields are named."""
    problems: list[RowProblem] = []
    for field, names, index in (("sku", skus, si), ("location", locations, li)):
        outside = index >= len(names)
        problems.append((outside, _past_the_end(field, len(names))))
        refusals = _dictionary_refusals(field, names, limits)
        if refusals:
            bad_entries = np.zeros(len(names), dtype=np.bool_)
            bad_entries[list(refusals)] = True
            problems.append((~outside & bad_entries[np.where(outside, 0, index)], _named(refusals, index)))
    out_of_range = InvalidArgument("on_hand", f"a count must be within [0, {limits.max_quantity}] (limit max_quantity)")
    problems.append(((qty < 0) | (qty > limits.max_quantity), lambda i: out_of_range))
    unset = InvalidArgument("as_of", "must be set, after 1970-01-01")
    ahead = InvalidArgument("as_of", f"more than {limits.fact_future_skew_ms} ms {AHEAD} (E7)")
    beyond = InvalidArgument("as_of", f"past {LAST_EVENT_TIME_MS} ms (9999-12-31), the last time a Timestamp "
                             "carries: no clock ever loads it")
    past = at > LAST_EVENT_TIME_MS  # refused here, not judged as ahead by its shard or its owner (edge/load.py)
    problems.append(((at <= 0) | (at > now + limits.fact_future_skew_ms) | past,
                     lambda i: unset if at[i] <= 0 else beyond if past[i] else ahead))
    return problems


def _past_the_end(field: str, size: int) -> Callable[[int], InvalidArgument]:
    refusal = InvalidArgument(f"{field}_index", f"past the end of the block's {size} {field}s")
    return lambda i: refusal


def _named(refusals: dict[int, InvalidArgument], index: npt.NDArray[np.uint32]) -> Callable[[int], InvalidArgument]:
    return lambda i: refusals[int(index[i])]


def _dictionary_refusals(field: str, names: Sequence[str], limits: Limits) -> dict[int, InvalidArgument]:
    refusals: dict[int, InvalidArgument] = {}
    for j, name in enumerate(names):
        try:
            check_id(field, name, limits)
        except InvalidArgument as exc:
            refusals[j] = exc
    return refusals
