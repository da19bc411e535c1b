"""An input-stream entry decoded into a fact: the format as documented, and nothing looser."""

from __future__ import annotations

import pytest

from atp_service.intake.dead_letters import KEPT_FIELDS, dead_letter, why_refused
from atp_service.intake.entries import FAR_FUTURE, decode_fact, decode_judged
from reservation import FactKind, InvalidArgument, Limits
from reservation._validate import LAST_EVENT_TIME_MS

NOW = 1_700_000_000_000
LIMITS = Limits()
MAX_BYTES = 16_384


def entry(**changed: str) -> list[bytes]:
    """A valid SALE entry in the documented order, with ``changed`` fields replaced."""
    fields = {"event_id": "e1", "source": "pos", "kind": "SALE", "sku": "A", "location": "S1", "quantity": "5",
              "event_time_ms": str(NOW - 1000), **changed}
    return [x.encode() for kv in fields.items() for x in kv]


def refusal(flat: list[bytes]) -> str:
    with pytest.raises(InvalidArgument) as refused:
        decode_fact(flat, NOW, LIMITS, MAX_BYTES)
    return refused.value.message


@pytest.mark.parametrize("quantity", ["1_000", " 5", "5 ", "+5", "\t5\n", "5.0", "", "-", "--5", "\u0663", "\uff15",
                                      "0x5"])
def test_a_number_is_an_optional_minus_and_ascii_digits_only(quantity: str) -> None:
    """int() takes all of these; the format does not, and says which field."""
    assert refusal(entry(quantity=quantity)).startswith("quantity: not an integer:")
    assert refusal(entry(event_time_ms=quantity)).startswith("event_time_ms: not an integer:")


def test_a_number_past_every_bound_is_refused_before_it_is_read() -> None:
    assert refusal(entry(quantity="9" * 4000)) == "quantity: 4000 digits, more than 19: out of range"


def test_documented_numbers_are_read() -> None:
    assert decode_fact(entry(quantity="007"), NOW, LIMITS, MAX_BYTES).quantity == 7
    assert decode_fact(entry(kind="ADJUST", quantity="-2"), NOW, LIMITS, MAX_BYTES).quantity == -2
    assert decode_fact(entry(kind="COUNT", quantity="0"), NOW, LIMITS, MAX_BYTES).quantity == 0


@pytest.mark.parametrize("kind", [" SALE", "SALE ", "sale", "Sale", "\u017fale", "SALE\n", "FACT_KIND_SALE", ""])
def test_a_kind_is_its_name_exactly_as_documented(kind: str) -> None:
    assert refusal(entry(kind=kind)).startswith(f"kind: unknown fact kind {kind!r} (one of SALE,")


def test_every_documented_kind_is_read() -> None:
    for kind in FactKind:
        quantity = "-1" if kind == FactKind.ADJUST else "1"
        assert decode_fact(entry(kind=kind.name, quantity=quantity), NOW, LIMITS, MAX_BYTES).kind == kind


def test_a_field_the_format_does_not_have_is_refused_naming_it() -> None:
    """A typo of the optional ``reservation_id`` would apply a SHIPMENT that fulfils nothing."""
    flat = [*entry(kind="SHIPMENT"), b"reservation", b"r1"]
    assert refusal(flat) == ("reservation: not a field of the entry format (a producer's own field is named "
                             "with the prefix 'x-')")
    assert refusal([b"qty", b"1", *entry()]).startswith("qty: not a field")


def test_a_producers_own_fields_and_a_dead_letters_annotations_are_not_read() -> None:
    flat = [*entry(), b"x-trace-id", b"abc", b"x-store", b"001", b"_reason", b"earlier", b"_field", b"quantity",
            b"_code", b"INVALID_FIELD", b"_stream", b"atp:in:pos", b"_id", b"1-0"]
    assert decode_fact(flat, NOW, LIMITS, MAX_BYTES).event_id == "e1"


def test_a_producers_own_fields_are_not_read_whatever_their_bytes() -> None:
    """Never read (OPERATIONS.md "Entry fields"): a producer's binary trace id or signature in an
    ``x-`` field is not a fault of the entry, which a field the format reads is."""
    flat = [*entry(), b"x-trace-id", bytes(range(0x80, 0x90)), b"x-\xff", b"1"]
    assert decode_fact(flat, NOW, LIMITS, MAX_BYTES).event_id == "e1"
    assert refusal([*entry()[:-1], b"\xff", b"x-a", b"b"]) == "entry: field values must be UTF-8"


def test_an_entry_past_its_byte_bound_is_refused_before_anything_of_it_is_read() -> None:
    flat = [*entry(), b"x-note", b"n" * 20_000]
    size = sum(map(len, flat))
    with pytest.raises(InvalidArgument) as refused:
        decode_fact(flat, NOW, LIMITS, MAX_BYTES)
    assert refused.value.message == f"entry: {size} bytes, more than 16384 (limit ingest_max_entry_bytes)"
    assert why_refused(refused.value) == (refused.value.message, "", "LIMIT_EXCEEDED")


def test_an_entry_of_more_names_and_values_than_its_bound_is_refused_and_its_dead_letter_cut_short() -> None:
    """Empty names and values count no bytes: an entry of a million of them (one XADD: a producer's
    serializer writing an empty pair for each empty slot) passed ``ingest_max_entry_bytes`` as 0 bytes,
    was read through, and its dead letter copied every one of them into the dead-letter stream."""
    flat = [*entry(), *[b""] * 2_000_000]
    with pytest.raises(InvalidArgument) as refused:
        decode_fact(flat, NOW, LIMITS, MAX_BYTES)
    assert why_refused(refused.value).code == "LIMIT_EXCEEDED"
    assert refused.value.message == ("entry: 1000007 fields, more names and values than 16384 "
                                     "(limit ingest_max_entry_bytes)")
    record = dead_letter(flat, why_refused(refused.value), "atp:in:pos", b"1-0", MAX_BYTES)
    assert len(record) <= 2 * (KEPT_FIELDS + 6) and record[-2:] == [b"_truncated", sum(map(len, flat))]


def test_ids_are_read_as_sent_without_unicode_normalization_E8() -> None:
    """E8 identity is the id's code points as sent: 'é' composed (NFC) and decomposed (NFD) are two
    event ids, two SKUs. Chosen, and documented (OPERATIONS.md "Entry fields"): normalizing would
    change the identity of facts already in the log (E10) and merge SKUs a catalogue keeps apart."""
    nfc, nfd = "caf\u00e9-1", "cafe\u0301-1"
    one = decode_fact(entry(event_id=nfc, sku=nfc), NOW, LIMITS, MAX_BYTES)
    other = decode_fact(entry(event_id=nfd, sku=nfd), NOW, LIMITS, MAX_BYTES)
    assert (one.event_id, one.sku, other.event_id, other.sku) == (nfc, nfc, nfd, nfd)


def test_an_entry_stamped_past_the_last_timestamp_is_refused_whatever_the_clock_E7() -> None:
    """``decode_judged`` sets an entry stamped past the skew aside, to be refused only once its shard finds it not
    applied already (by a process whose clock ran ahead): one stamped past any time a ``Timestamp`` carries
    (after year 9999) was set aside too, and sent to its group's owner in a request that could not be built."""
    ahead = entry(event_time_ms=str(NOW + 3_600_000))
    fact, refused = decode_judged(ahead, NOW, LIMITS, MAX_BYTES)
    assert fact.event_time == NOW + 3_600_000 and refused is not None and refused.field == "event_time_ms"
    decode_judged(entry(event_time_ms=str(LAST_EVENT_TIME_MS)), FAR_FUTURE, LIMITS, MAX_BYTES)
    with pytest.raises(InvalidArgument) as past:
        decode_judged(entry(event_time_ms=str(LAST_EVENT_TIME_MS + 1)), NOW, LIMITS, MAX_BYTES)
    assert past.value.field == "event_time_ms" and "ahead of the service clock" in past.value.problem


@pytest.mark.parametrize("changed", [{"quantity": b"\xff"}, {"event_time_ms": b"17\xe9"},
                                     {"kind": b"VOID", "quantity": b"\xff"},
                                     {"event_id": b"x" * 200, "quantity": b"\xff"}])
def test_an_entry_s_dead_letter_does_not_depend_on_the_order_of_its_fields(changed: dict[str, bytes]) -> None:
    """Bytes not UTF-8 in a field that is read are ``REQUEST_MALFORMED`` (docs/OPERATIONS.md, "Dead letters"). An entry
    in the documented order skips the check of the whole entry: one whose number was not UTF-8 was dead-lettered
    ``INVALID_FIELD`` naming it, or naming another field at fault, where the same fields in another order, or with a
    producer's ``x-`` field, were ``REQUEST_MALFORMED``: a tool sorting dead letters by ``_code`` told them apart."""
    documented = [x for name, value in zip(entry()[0::2], entry()[1::2], strict=True)
                  for x in (name, changed.get(name.decode(), value))]
    pairs = list(zip(documented[0::2], documented[1::2], strict=True))
    reordered = [x for pair in reversed(pairs) for x in pair]
    whys = []
    for flat in (documented, [*documented, b"x-trace", b"t1"], reordered):
        with pytest.raises(InvalidArgument) as refused:
            decode_fact(flat, NOW, LIMITS, MAX_BYTES)
        whys.append(why_refused(refused.value))
    assert whys == [whys[2]] * 3 and whys[2].code == "REQUEST_MALFORMED", whys
