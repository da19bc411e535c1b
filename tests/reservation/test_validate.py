"""Request checks (``reservation/_validate.py``): what a refusal names, for the caller to act on."""

from __future__ import annotations

import pytest

from reservation import InvalidArgument, Limits, check_id, reserve_command
from reservation._validate import NOT_PRINTABLE


@pytest.mark.parametrize("value", ["SKU\x00", "SKU\u00a0X", "A\u200dB", "line\u2028two", "\U000e0001x"])
def test_an_id_with_a_character_that_is_not_printable_is_refused_naming_what_is_refused(value: str) -> None:
    """Not only control characters: a no-break space, a zero-width joiner, a line separator and an
    unassigned-for-text tag character are refused too, and the message says so."""
    with pytest.raises(InvalidArgument) as refused:
        check_id("sku", value, Limits())
    assert refused.value.field == "sku"
    assert refused.value.problem == NOT_PRINTABLE


@pytest.mark.parametrize("value", ["SKU 1", "café-ø", "商品-42", "\U0001f4e6"])
def test_a_printable_id_in_any_script_passes(value: str) -> None:
    assert check_id("sku", value, Limits()) == value


def test_a_ttl_out_of_range_names_both_limits() -> None:
    limits = Limits()
    with pytest.raises(InvalidArgument) as refused:
        reserve_command(reservation_id="r-1", order_ref="", channel="", lines=[("SKU", "LOC", 1)],
                        ttl_seconds=limits.max_ttl_seconds + 1, allow_partial=False, limits=limits)
    assert refused.value.field == "ttl"
    assert "min_ttl_seconds" in refused.value.problem and "max_ttl_seconds" in refused.value.problem
