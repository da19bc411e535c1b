"""One declaration of a channel stream entry's fields: the writer script, the readers and the
publishers follow it (storage/channel_wire.py). Pure: no Redis here (test_channel_fence.py and the
channel tests write and read real streams)."""

from __future__ import annotations

import re

import pytest

from atp_service.storage.channel_script import WRITE
from atp_service.storage.channel_wire import (
    FIELDS,
    FOLLOWS,
    FOLLOWS_ARG,
    MARKER,
    MARKER_ARG,
    MARKER_FIELDS,
    START,
    STATE_ARG,
    StartMarker,
    follows_on,
    from_fields,
    script_item,
    start_marker,
    state_entry,
    state_update,
    to_fields,
    values_of,
)
from reservation import ChannelUpdate, Published, StockStatus

U = ChannelUpdate("web", "sku-1", "dc-1", 7, None, StockStatus.LOW_STOCK, 42, 1_000, 1_001, 1_002)


def test_an_entry_round_trips_as_str_or_bytes() -> None:
    fields = to_fields(U)
    assert tuple(fields) == FIELDS
    assert from_fields(fields) == U
    assert from_fields({k.encode(): v.encode() for k, v in fields.items()}) == U  # a client without decoding
    assert from_fields({**fields, "previous": "9"}).previous == 9


def test_the_writer_script_sets_every_field_once_from_the_declaration() -> None:
    xadd = re.search(r"redis\.call\('XADD'.*\)", WRITE)
    assert xadd is not None
    named = re.findall(r"'(\w+)', (?:u\[\d+\]|channel|now)", xadd.group(0))
    assert tuple(named) == FIELDS  # every field, in order, once
    item = script_item(U)
    assert len(item) == STATE_ARG and item[MARKER_ARG - 1] == ""  # an update: no marker
    by_position = {int(n): name for name, n in re.findall(r"'(\w+)', u\[(\d+)\]", xadd.group(0))}
    assert {name: item[n - 1] for n, name in by_position.items()} == {
        k: v for k, v in to_fields(U).items() if k in by_position.values()}


def test_a_runs_first_entry_names_the_version_it_follows_and_the_others_follow_the_one_before() -> None:
    first = ChannelUpdate("web", "sku-1", "dc-1", 7, None, StockStatus.LOW_STOCK, 5_000, 1_000, 1_001, 1_002, 42)
    fields = to_fields(first)
    assert tuple(fields) == (*FIELDS, FOLLOWS) and fields[FOLLOWS] == "42"
    assert from_fields(fields) == first and from_fields(to_fields(U)).follows is None  # an entry written before
    assert script_item(first)[FOLLOWS_ARG - 1] == "42" and script_item(U)[FOLLOWS_ARG - 1] == ""
    linked = re.findall(r"redis\.call\('XADD'.*\)", WRITE)[1]  # the writer's XADD of a run's first entry
    assert re.findall(r"'(\w+)', (?:u\[\d+\]|channel|now)", linked) == [*FIELDS, FOLLOWS]
    assert f"'{FOLLOWS}', u[{FOLLOWS_ARG}]" in linked
    assert follows_on(5_000, 42, 42) and not follows_on(5_000, 42, 4_999) and not follows_on(5_000, 42, 41)
    assert follows_on(43, None, 42) and not follows_on(44, None, 42)


def test_the_state_hash_value_the_script_stores_reads_back() -> None:
    key, pub = state_entry(b"sku-1\tdc-1", script_item(U)[STATE_ARG - 1].encode())
    assert key == ("sku-1", "dc-1") and pub == Published(7, 42, 1_000, StockStatus.LOW_STOCK)


def test_a_start_marker_carries_its_version_and_the_one_it_follows_and_no_update() -> None:
    marker = start_marker("web", 5_000, 42, 1_002)
    fields = to_fields(marker)
    assert tuple(fields) == MARKER_FIELDS and fields[MARKER] == START and fields[FOLLOWS] == "42"
    assert "sku" not in fields  # a reader that does not know markers finds no update in it
    back = from_fields({k.encode(): v.encode() for k, v in fields.items()})
    assert isinstance(back, StartMarker) and back == marker and back.follows == 42 and back.version == 5_000
    assert values_of([back, U]) == [U]
    item = script_item(marker)
    assert (item[MARKER_ARG - 1], item[FOLLOWS_ARG - 1], item[STATE_ARG - 1]) == (START, "42", "")
    marked = re.findall(r"redis\.call\('XADD'.*\)", WRITE)[2]  # the writer's XADD of a marker
    named = dict(re.findall(r"'(\w+)', (u\[\d+\]|channel|now)", marked))
    assert tuple(named) == MARKER_FIELDS
    assert {name: item[int(at[2:-1]) - 1] for name, at in named.items() if at.startswith("u[")} == {
        k: v for k, v in fields.items() if k in ("version", FOLLOWS, MARKER)}


def test_a_marker_of_a_kind_not_known_is_refused_as_an_entry_of_another_format() -> None:
    with pytest.raises(ValueError, match="'rewind'"):
        from_fields({**to_fields(start_marker("web", 5_000, 42, 1_002)), MARKER: "rewind"})


def test_a_state_hash_value_written_before_the_status_was_kept_reads_with_the_status_a_publisher_gives_it() -> None:
    assert state_entry("a\t", "3 7 11")[1] == Published(3, 7, 11, StockStatus.IN_STOCK)
    assert state_entry("a\t", "0 8 11")[1] == Published(0, 8, 11, StockStatus.OUT_OF_STOCK)
    assert state_update("web", "a\t", "3 7 11").status is StockStatus.IN_STOCK
