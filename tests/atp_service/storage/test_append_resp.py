"""The append's RESP, put together from per-shard parts, is byte for byte what hiredis packs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_service.storage.append_resp import AppendPacker, bulk
from atp_service.storage.records import Pending

SHA = "0123456789abcdef0123456789abcdef01234567"


def keys_of(shard: int) -> tuple[str, str, str, str]:
    return f"atp:{{s{shard}}}:owner", f"atp:{{s{shard}}}:log", f"atp:{{s{shard}}}:fence", f"atp:{{s{shard}}}:log-begun"


def reference(unit: list[Pending]) -> bytes:
    """The command as the generic path packs it: hiredis, argument by argument."""
    keys = [k for p in unit for k in keys_of(p.shard)]
    args = [a for p in unit for a in (p.epoch, p.seq, p.data, p.token, p.group)]
    packed: bytes = hiredis.pack_command(("EVALSHA", SHA, len(keys), *keys, *args))
    return packed


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def pending(loop: asyncio.AbstractEventLoop, shard: int, seq: int, data: bytes, epoch: int = 1, token: int = 0,
            group: int = 0) -> Pending:
    return Pending(shard, seq, data, epoch, token, group, loop.create_future())


entries = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 10**12), st.binary(max_size=64), st.integers(0, 3),
              st.integers(0, 10**6), st.integers(0, 3)),
    min_size=1, max_size=6)


@given(st.lists(entries, min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_every_unit_packs_to_the_bytes_hiredis_would_send(
        units: list[list[tuple[int, int, bytes, int, int, int]]]) -> None:
    # One packer across many units: its kept parts (epoch, token, the seq's width) must follow each
    # entry's own values, whichever order they come in.
    loop = asyncio.new_event_loop()
    try:
        packer = AppendPacker(SHA, keys_of)
        for raw in units:
            unit = [pending(loop, shard, seq, data, epoch, token, group)
                    for shard, seq, data, epoch, token, group in raw]
            keys, packed = packer.pack(unit)
            assert packed == reference(unit)
            assert keys == [k for p in unit for k in keys_of(p.shard)]
    finally:
        loop.close()


def test_a_shards_seqs_crossing_a_power_of_ten_keep_their_widths_right(loop: asyncio.AbstractEventLoop) -> None:
    packer = AppendPacker(SHA, keys_of)
    for seq in [*range(0, 12), 99, 100, 101, 999, 1000, 9, 10**9, 10**9 - 1, 5]:
        unit = [pending(loop, 0, seq, b"entry")]
        assert packer.pack(unit)[1] == reference(unit), seq


def test_a_new_epoch_or_fence_token_is_carried_from_the_entry_that_brings_it(loop: asyncio.AbstractEventLoop) -> None:
    packer = AppendPacker(SHA, keys_of)
    for epoch, token in [(1, 0), (1, 0), (2, 0), (2, 7), (1, 7), (10, 100)]:
        unit = [pending(loop, 3, 42, b"x", epoch, token)]
        assert packer.pack(unit)[1] == reference(unit), (epoch, token)


def test_a_bulk_string_is_binary_safe_and_counts_bytes_not_characters() -> None:
    assert bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert bulk("é") == b"$2\r\n\xc3\xa9\r\n"
    assert bulk(-12) == b"$3\r\n-12\r\n"
    assert bulk(b"") == b"$0\r\n\r\n"
