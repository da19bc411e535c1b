"""An ERP extract (CSV) read as blocks of columns, for ``atpctl stock load``.

The file is cut into pieces of whole lines. A piece with nothing odd in it (every line a row with
the header's columns, on_hand an integer) is parsed by Apache Arrow's CSV reader, in C, and its
names are decoded once per distinct value: no Python object per row. Any other piece (a blank
line, a quoted line break, a field that is not a number, a short row) is read by Python's csv
module, row by row, so that each bad row is reported with its line and reason and the rest load.
Without pyarrow installed every piece is read that way (correct, several times slower).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
except ImportError:  # pragma: no cover - the extra is not installed
    pa = None

REQUIRED = ("sku", "location", "on_hand")
PIECE_BYTES = 8 << 20
"""Bytes of whole lines read and parsed at a time (~300,000 rows of a typical extract)."""
MAX_TIMES = 4096
"""Distinct as_of values whose parse is remembered: a typical extract has a few (the file's time, a
store's count time), parsed once each. Past it the memo starts again. One entry per distinct value
for the whole file held every time string of an extract whose rows each have their own moment —
about 1.5 GB for 10 million rows, while the rows themselves go a piece at a time."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTEGER = r"^[ \t]*-?[0-9]{1,18}[ \t]*$"
"""What both paths read as a count: digits, a minus sign, spaces around (18 digits fit int64)."""
MAX_TIME_DIGITS = 18
"""Digits an epoch-ms time may have: as many as a count (``_INTEGER``), all of which fit int64."""
LAST_TIME_MS = 253_402_300_799_999
"""The last time a count may carry: 9999-12-31T23:59:59.999Z, the last instant of a protobuf ``Timestamp`` (the
service refuses a row past it as no clock ever loads it)."""
Ints = npt.NDArray[np.int64]
_FIELD = rb'(?:"(?:[^"]|"")*+"(?!")[^,\n]*+|[^",\n][^,\n]*+|)'
_RECORDS = re.compile(rb"(?:%s(?:,%s)*\n)*" % (_FIELD, _FIELD))
"""Whole rows as Python's csv reads them: a quote opens a quoted field only at the field's start
(inside one, a doubled quote is a quote, and a line break is part of the field); elsewhere a quote
is a character (``PIPE 1/2"``). The match of a piece ends after its last row that ends."""


class HeaderError(ValueError):
    """The file's header lacks a required column: nothing is sent."""


@dataclass
class Rejected:
    line: int
    sku: str
    location: str
    reason: str


@dataclass
class Block:
    """Rows of the file as columns: line numbers, names by index, counts and their times."""

    lines: Ints
    skus: list[str]
    sku_index: npt.NDArray[np.uint32]
    locations: list[str]
    location_index: npt.NDArray[np.uint32]
    on_hand: Ints
    as_of: Ints
    rejected: list[Rejected] = field(default_factory=list)
    """Rows of these lines that could not be read, with why (never sent)."""
    rows_read: int = 0


class TimeOutOfRange(ValueError):
    """A time read as one that no count may carry: at or before 1970-01-01, or past ``LAST_TIME_MS``."""


def parse_time(text: str) -> int:
    """Epoch ms from RFC 3339 (``2026-11-28T06:00:00Z``) or from digits (epoch ms). RFC 3339 lets
    "Z" be "z" (5.6), which ``fromisoformat`` refuses: every row of such an extract was rejected.
    A time no count may carry is refused here (``TimeOutOfRange``), not sent to be refused by the service."""
    text = text.strip()
    if text.isdigit():
        if len(text) > MAX_TIME_DIGITS:  # else the block's int64 column raised OverflowError: the load ended
            raise ValueError(f"{text[:40]!r}: more than {MAX_TIME_DIGITS} digits, past any epoch ms")
        return _in_range(text, int(text))
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +hh:mm)")
    return _in_range(text, (moment - _EPOCH) // timedelta(milliseconds=1))  # exact: float seconds can land 1 ms low


def _in_range(text: str, ms: int) -> int:
    if ms <= 0:
        raise TimeOutOfRange(f"{text!r} is at or before 1970-01-01T00:00:00Z: a count's time is after it")
    if ms > LAST_TIME_MS:
        raise TimeOutOfRange(f"{text!r} is past 9999-12-31T23:59:59.999Z ({LAST_TIME_MS} ms), the last time a count "
                             "may carry")
    return ms


class Extract:
    """The blocks of one file, in order; ``position`` is how many bytes are read (progress)."""

    def __init__(self, handle: BinaryIO, as_of: int | None) -> None:
        self._handle, self._as_of = handle, as_of
        first = handle.readline()
        self.position, self._next_line = len(first), 2
        self.header = [c.strip().lower() for c in next(csv.reader([first.decode("utf-8-sig", "replace")]), [])]
        missing = [c for c in REQUIRED if c not in self.header]
        if missing:
            raise HeaderError(f"header: missing column(s) {', '.join(missing)} (have: {', '.join(self.header)})")
        twice = [c for c in (*REQUIRED, "as_of") if self.header.count(c) > 1]
        if twice:  # Arrow's path would read the first of them, csv's the last
            raise HeaderError(f"header: column(s) {', '.join(twice)} named more than once")
        self._at = {name: self.header.index(name) for name in (*REQUIRED, "as_of") if name in self.header}
        self._times: dict[bytes, int | str] = {}

    def __iter__(self) -> Iterator[Block]:
        rest = b""
        while True:
            data = self._handle.read(PIECE_BYTES)
            piece = rest + data
            cut = piece.rfind(b"\n") + 1 if data else len(piece)
            block = self._fast(piece[:cut], self._next_line) if cut else None
            if block is None and data and b'"' in piece:
                # Arrow took the piece whole only if no line break in it is quoted; otherwise one
                # may be the last, in the middle of a row: cut after the last row that ends.
                found = _RECORDS.match(piece, 0, cut)  # always matches: zero rows at least
                whole = found.end() if found else 0
                if whole != cut:
                    cut = whole
                    block = self._fast(piece[:cut], self._next_line) if cut else None
            piece, rest = piece[:cut], piece[cut:]
            if piece:
                self.position += len(piece)
                first, self._next_line = self._next_line, self._next_line + piece.count(b"\n")
                yield block or self._slow(piece, first)
            if not data:
                return

    # -- the fast path: Arrow parses, numpy checks ------------------------------------------
    def _fast(self, piece: bytes, first: int) -> Block | None:
        if pa is None:
            return None
        names = [f"c{i}" for i in range(len(self.header))]
        at = self._at
        types = {names[at["sku"]]: pa.binary(), names[at["location"]]: pa.binary(), names[at["on_hand"]]: pa.binary()}
        if "as_of" in at:
            types[names[at["as_of"]]] = pa.binary()
        try:
            table = pa_csv.read_csv(
                io.BytesIO(piece), read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
                parse_options=pa_csv.ParseOptions(ignore_empty_lines=False),
                convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=list(types),
                                                      strings_can_be_null=False, quoted_strings_can_be_null=False))
        except pa.ArrowInvalid:
            return None
        lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
        on_hand = table.column(names[at["on_hand"]])
        if table.num_rows != lines or not pc.all(pc.match_substring_regex(on_hand, _INTEGER)).as_py():
            return None  # a quoted line break, or a count that is not an integer: row by row
        counts = pc.cast(pc.utf8_trim_whitespace(pc.cast(on_hand, pa.string())), pa.int64())
        return self._checked(table, names, np.arange(first, first + lines, dtype=np.int64),
                             counts.to_numpy().astype(np.int64))

    def _checked(self, table: pa.Table, names: list[str], lines: Ints, on_hand: Ints) -> Block:
        at = self._at
        skus, si, sku_bad = _names(table.column(names[at["sku"]]))
        locations, li, loc_bad = _names(table.column(names[at["location"]]))
        times, time_bad = self._row_times(table.column(names[at["as_of"]]) if "as_of" in at else None, len(lines))
        problems = [np.where(sku_bad[si] == "empty", 1, 0) | np.where(loc_bad[li] == "empty", 1, 0),
                    np.where(sku_bad[si] == "utf8", 1, 0) | np.where(loc_bad[li] == "utf8", 1, 0),
                    on_hand < 0, time_bad != ""]
        bad = np.zeros(len(lines), dtype=np.bool_)
        for mask in problems:
            bad |= mask.astype(np.bool_)
        rejected = [Rejected(int(lines[i]), _shown(skus[si[i]]), _shown(locations[li[i]]),
                             _why(problems, i, int(on_hand[i]), str(time_bad[i])))
                    for i in np.flatnonzero(bad).tolist()]
        good = ~bad
        return Block(lines[good], skus, si[good], locations, li[good], on_hand[good], times[good], rejected,
                     len(lines))

    def _row_times(self, column: pa.ChunkedArray | None, rows: int) -> tuple[Ints, npt.NDArray[np.str_]]:
        """Each row's as-of time, and why it has none ("" where it has)."""
        if column is None:
            entries: list[bytes] = [b""]
            index = np.zeros(rows, dtype=np.intp)
        else:
            encoded = pc.dictionary_encode(column).combine_chunks()
            entries = encoded.dictionary.to_pylist()
            index = encoded.indices.to_numpy().astype(np.intp)
        times, errors = np.zeros(len(entries), dtype=np.int64), np.full(len(entries), "", dtype=object)
        for j, raw in enumerate(entries):
            value = self._time(raw)
            if isinstance(value, str):
                errors[j] = value
            else:
                times[j] = value
        return times[index], errors[index].astype(str)

    def _time(self, raw: bytes) -> int | str:
        found = self._times.get(raw)
        if found is None:
            text = raw.decode("utf-8", "replace").strip()
            try:
                found = parse_time(text) if text else self._as_of
                if found is None:
                    found = "as_of: no time for this row (give the column or --as-of)"
            except TimeOutOfRange as exc:  # a time, but not one a count may carry
                found = f"as_of: {exc}"
            except ValueError as exc:  # named by its column, as every other reason is: a file may have two times
                found = f"as_of: not a time (RFC 3339 with a zone, or epoch ms): {exc}"
            if len(self._times) >= MAX_TIMES:
                self._times.clear()
            self._times[raw] = found
        return found

    # -- the exact path: Python's csv, row by row -----------------------------------------------
    def _slow(self, piece: bytes, first: int) -> Block:
        reader = csv.reader(io.StringIO(piece.decode("utf-8", "surrogateescape"), newline=""))
        out: dict[str, list[int]] = {"lines": [], "on_hand": [], "as_of": []}
        sku_of: dict[str, int] = {}
        loc_of: dict[str, int] = {}
        si: list[int] = []
        li: list[int] = []
        rejected: list[Rejected] = []
        rows = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a field past csv's size limit: this row only
                rows += 1
                rejected.append(Rejected(first + reader.line_num - 1, "", "", f"not CSV: {exc}"))
                continue
            if not values:
                continue  # a blank line
            rows += 1
            line = first + reader.line_num - 1
            row = dict(zip(self.header, values, strict=False))
            sku, location = (row.get("sku") or "").strip(), (row.get("location") or "").strip()
            try:
                on_hand, at = self._count(row, sku, location)
            except ValueError as exc:
                rejected.append(Rejected(line, _shown(sku), _shown(location), str(exc)))
                continue
            out["lines"].append(line)
            out["on_hand"].append(on_hand)
            out["as_of"].append(at)
            si.append(sku_of.setdefault(sku, len(sku_of)))
            li.append(loc_of.setdefault(location, len(loc_of)))
        return Block(np.array(out["lines"], dtype=np.int64), list(sku_of), np.array(si, dtype=np.uint32),
                     list(loc_of), np.array(li, dtype=np.uint32), np.array(out["on_hand"], dtype=np.int64),
                     np.array(out["as_of"], dtype=np.int64), rejected, rows)

    def _count(self, row: dict[str, str], sku: str, location: str) -> tuple[int, int]:
        if not sku or not location:
            raise ValueError("sku and location: must not be empty")
        if not (_utf8(sku) and _utf8(location)):
            raise ValueError("sku and location: not UTF-8")
        raw = (row.get("on_hand") or "").strip(" \t")
        if not re.fullmatch(_INTEGER, raw):
            raise ValueError(f"on_hand: not an integer (at most 18 digits): {raw!r}")
        quantity = int(raw)
        if quantity < 0:
            raise ValueError(f"on_hand: must not be negative, got {quantity}")  # the upper bound is the service's
        at = self._time((row.get("as_of") or "").encode("utf-8", "surrogateescape"))
        if isinstance(at, str):
            raise ValueError(at)
        return quantity, at


def _names(column: pa.ChunkedArray) -> tuple[list[str], npt.NDArray[np.uint32], npt.NDArray[np.str_]]:
    """Distinct names (stripped, decoded once each), each row's index, and per name what is wrong
    with it ("", "empty" or "utf8"). Names equal once stripped share one index."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    index_of: dict[str, int] = {}
    remap = np.zeros(len(encoded.dictionary), dtype=np.uint32)
    faults: list[str] = []
    for j, raw in enumerate(encoded.dictionary.to_pylist()):
        text = raw.decode("utf-8", "surrogateescape").strip()
        k = index_of.setdefault(text, len(index_of))
        if k == len(faults):
            faults.append("empty" if not text else "" if _utf8(text) else "utf8")
        remap[j] = k
    return list(index_of), remap[encoded.indices.to_numpy()], np.array(faults, dtype=object).astype(str)


def _why(problems: list[npt.NDArray[np.generic]], i: int, on_hand: int, time_fault: str) -> str:
    """The reason of the first problem of row ``i``, in the order the exact path checks them."""
    if problems[0][i]:
        return "sku and location: must not be empty"
    if problems[1][i]:
        return "sku and location: not UTF-8"
    if problems[2][i]:
        return f"on_hand: must not be negative, got {on_hand}"
    return time_fault


def _shown(text: str) -> str:
    """A field as the report can hold it (bytes that were not UTF-8 are shown escaped)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
