"""Where the service's log lines go (standard error) and how they read: ``text`` for people,
``json`` (one object per line) for a log pipeline.

A line's structured fields are passed with ``extra=`` (``log.warning("call denied", extra={"rpc":
...})``): in JSON each is a field of its own, in text they follow the message as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger(__name__)
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
"""What every log record carries; anything else on a record was passed as one of its fields."""


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a line was logged with (``extra=``)."""
    return {key: value for key, value in vars(record).items() if key not in RECORD_ATTRIBUTES}


def _text(value: Any) -> str:
    text = str(value)
    # Quoted when it would not read as one value (a reason with spaces): the line stays splittable.
    return json.dumps(text) if not text or any(c.isspace() or c in '="' for c in text) else text


class TextFormatter(logging.Formatter):
    """Time, level, logger and message, then the line's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # before any traceback is appended
        fields = fields_of(record)
        line = super().formatMessage(record)
        return line + "".join(f" {key}={_text(value)}" for key, value in fields.items()) if fields else line


class JsonFormatter(_JsonFormatter):
    """``{"time": ISO-8601 UTC, "level", "logger", "message", ...the line's fields}``; a traceback,
    if any, as ``exc_info``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"},
                         reserved_attrs=sorted(RECORD_ATTRIBUTES))

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


UNDELIVERED = "ExecuteBatchError raised in core by servicer method"
"""How gRPC's asyncio server begins the line (at ERROR, with a traceback) for an answer it could not send."""


class UndeliveredAnswers(logging.Filter):
    """gRPC's ERROR for an answer that found its caller gone (its deadline passed, or it cancelled, before
    the answer was sent), told at DEBUG and without its traceback. A caller's deadline is routine: the call
    ended as its answer says, delivered or not (R8), and a retry with the same ids learns how (R5); a peak
    day's timeouts written as tracebacks at ERROR would bury the errors that matter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not str(record.msg).startswith(UNDELIVERED):
            return True
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_UNDELIVERED = UndeliveredAnswers()


def set_up_logging(level: str, log_format: str, stream: IO[str] | None = None) -> None:
    """Every logger's lines at ``level`` and above, in ``log_format`` (``text`` or ``json``), on
    ``stream`` (standard error by default); gRPC's line for an answer its caller was gone for, at DEBUG
    (``UndeliveredAnswers``)."""
    logging.getLogger("grpc._cython.cygrpc").addFilter(_UNDELIVERED)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class EveryInterval:
    """Whether a line that a fault repeats for as long as it lasts (a full Redis refusing every write)
    is written now: at most one per ``interval_s``, the next one written saying how many were left
    out. One line per occurrence, thousands a minute, flooded the log pipeline exactly when the
    operator read it; the occurrences are counted in a metric by the caller."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic, event: str | None = None
                 ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._written_at = float("-inf")
        self.left_out = 0
        """Lines left out since the last one written."""
        self.event = event
        """The ``event`` of its lines, whose next one says ``left_out`` (``fields`` learns it): said at a stop
        (``say_left_out``). None: the count is said by no line (``noted_now_and_then``)."""
        self.logger: logging.Logger | None = None
        counted(self)

    def due(self) -> int | None:
        """None: leave this line out (it is counted); else write it, with this many left out before it."""
        now = self._clock()
        if now - self._written_at < self.interval_s:
            self.left_out += 1
            return None
        self._written_at = now
        left_out, self.left_out = self.left_out, 0
        return left_out

    def again(self) -> None:
        """The fault over: the next line written at once (its count of lines left out kept for it)."""
        self._written_at = float("-inf")

    def fields(self, *, event: str, **fields: object) -> dict[str, object] | None:
        """``due`` for a line whose ``extra`` is ``event`` and ``fields``: None to leave it out (counted), else
        those, with ``left_out`` where lines were left out before it. Keywords only: tests/test_log_events_doc.py
        reads each line's event and fields from this call, as from a dict literal."""
        self.event = event
        left_out = self.due()
        if left_out is None:
            return None
        said: dict[str, object] = dict(event=event, **fields)  # the event first, as the lines wrote it
        if left_out:
            said["left_out"] = left_out
        return said


def noted_now_and_then(note: Callable[[BaseException, float], None], every_s: float,
                       each: Callable[[BaseException, float], None] | None = None,
                       clock: Callable[[], float] = time.monotonic) -> Callable[[BaseException, float], None]:
    """An ``on_error`` for ``retry.retry_until_done`` that passes the first failure to ``note``, then at
    most one every ``every_s`` (``EveryInterval``: a wait that lasts must be seen by the operator, and
    not flood the log); every failure to ``each``."""
    gate = EveryInterval(every_s, clock)

    def on_error(exc: BaseException, wait_s: float) -> None:
        if each is not None:
            each(exc, wait_s)
        if gate.due() is not None:
            note(exc, wait_s)

    return on_error


class LeftOutCount(Protocol):
    """A limiter whose next line says how many were left out before it (``left_out``) of its lines (``event``)."""

    left_out: int

    @property
    def event(self) -> str | None:
        """The ``event`` of its lines (None: a count no line says)."""

    @property
    def logger(self) -> logging.Logger | None:
        """Where its lines go, where known (the count at the stop said there, else by ``atp_service.logs``)."""


_counted: weakref.WeakSet[LeftOutCount] = weakref.WeakSet()
"""The process's limiters: their counts said at its stop (``say_left_out``)."""


def counted(limiter: LeftOutCount) -> None:
    """``limiter``'s count said at the process's stop (``say_left_out``), where it has lines left out then."""
    _counted.add(limiter)


def say_left_out() -> int:
    """One ``log_lines_left_out`` line for each limiter (``counted``) with lines left out since its last: its next line
    would have said how many, and none comes after the stop (``atp-service serve``, ``atp-publisher``). Said once
    (the counts taken). Returns how many lines were said."""
    said = 0
    for limiter in sorted(_counted, key=lambda limiter: limiter.event or ""):
        left_out, event = limiter.left_out, limiter.event
        if left_out and event is not None:
            limiter.left_out = 0
            said += 1
            (limiter.logger or log).warning("%d %s lines left out since the last one written, at the stop", left_out,
                                            event, extra={"event": "log_lines_left_out", "of": event,
                                                          "left_out": left_out})
    return said


def say_on_stdout(text: str) -> None:
    """``text`` on stdout at once; its reader gone (``| head``, ``| tee`` with tee gone, a log collector restarted),
    the text is lost and the rest of stdout goes nowhere, what is buffered too (flushed at exit, nowhere). A
    BrokenPipeError raised instead left the caller mid-way: the service never ready and hung at exit, deaf to every
    signal; ``make cluster --serve``'s service processes unknown to its stop, orphaned."""
    try:
        print(text, flush=True)
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):
            pass
