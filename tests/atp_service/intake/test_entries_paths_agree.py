"""An entry in the documented field order (``decode_fact``'s fast path) is decoded exactly as the same fields in
any other order: the same fact, or the same refusal (field, message, dead letter's ``_code``) — an entry's fate
does not depend on the producer's field order (E7, E9 as the dead-letter table documents them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atp_service.intake.dead_letters import why_refused
from atp_service.intake.entries import REQUIRED, decode_fact, decode_judged
from reservation import Fact, InvalidArgument, Limits
from reservation._validate import LAST_EVENT_TIME_MS

NOW = 1_700_000_000_000
LIMITS = Limits()
MAX_BYTES = 4096
_NUMBERS = [b"5", b"-5", b"0", b"-0", b"1_000", b" 5", b"+5", b"", b"-", b"\xd9\xa3", b"\xff5", b"9" * 20,
            b"1000000", b"1000001", b"-1000001", str(NOW).encode(), str(NOW + 10**9).encode(),
            str(LAST_EVENT_TIME_MS).encode(), str(LAST_EVENT_TIME_MS + 1).encode(), b"9" * 19]
_TEXTS = [b"e1", b"pos", b"A", b"", b" ", b"a\x00b", b"\xff", b"\xc3", b"caf\xc3\xa9", b"x" * 200, b"\xe2\x80\x8b",
          b"\xed\xa0\x80"]
_KINDS = [b"SALE", b"RETURN", b"ADJUST", b"COUNT", b"SHIPMENT", b"RECEIPT", b"sale", b" SALE", b"\xc5\xbfALE",
          b"\xff", b""]


def _value(name: str) -> st.SearchStrategy[bytes]:
    """Good and bad values of the field, and arbitrary bytes."""
    pool = _NUMBERS if name in ("quantity", "event_time_ms") else _KINDS if name == "kind" else _TEXTS
    return st.one_of(st.sampled_from(pool), st.binary(max_size=8))


ENTRIES = st.tuples(*(_value(name) for name in REQUIRED))
RUN: dict[str, Any] = {"deadline": None, "database": None, "derandomize": True,
                       "suppress_health_check": [HealthCheck.too_slow]}
"""The same examples every run: a difference found once is found again."""


def _outcome(decode: Callable[[], object]) -> tuple[object, ...]:
    """What a decode made of an entry, comparable: the fact, or the refusal as its dead letter tells it."""
    try:
        made = decode()
    except InvalidArgument as exc:
        return "refused", type(exc).__name__, exc.field, exc.message, why_refused(exc)
    return "decoded", made


def _documented(values: tuple[bytes, ...]) -> list[bytes]:
    return [part for name, value in zip(REQUIRED, values, strict=True) for part in (name.encode(), value)]


def _reordered(values: tuple[bytes, ...]) -> list[bytes]:
    """The same fields in reverse order: the slow path."""
    pairs = list(zip(REQUIRED, values, strict=True))[::-1]
    return [part for name, value in pairs for part in (name.encode(), value)]


def _with_own_field(values: tuple[bytes, ...]) -> list[bytes]:
    """The documented order and a producer's own field after it, not UTF-8 (never read): the slow path."""
    return [*_documented(values), b"x-trace", b"\xff\xfe"]


@settings(max_examples=1500, **RUN)
@given(ENTRIES)
def test_the_documented_order_decodes_as_any_other(values: tuple[bytes, ...]) -> None:
    fast = _outcome(lambda: decode_fact(_documented(values), NOW, LIMITS, MAX_BYTES))
    assert fast == _outcome(lambda: decode_fact(_reordered(values), NOW, LIMITS, MAX_BYTES))
    assert fast == _outcome(lambda: decode_fact(_with_own_field(values), NOW, LIMITS, MAX_BYTES))


@settings(max_examples=800, **RUN)
@given(ENTRIES)
def test_a_fact_stamped_ahead_is_judged_alike_in_any_order(values: tuple[bytes, ...]) -> None:
    """``decode_judged`` (E7 against E8): the same fact and refusal, or the same refusal alone."""
    def judged(flat: list[bytes]) -> tuple[object, ...]:
        def run() -> tuple[Fact, tuple[str, str] | None]:
            made, refusal = decode_judged(flat, NOW, LIMITS, MAX_BYTES)
            return made, None if refusal is None else (refusal.field, refusal.message)
        return _outcome(run)

    assert judged(_documented(values)) == judged(_reordered(values)) == judged(_with_own_field(values))
