"""The curator's cache of a channel's location columns per shard follows the store's layout of columns, not its count
of them: a batch taken back drops the columns only its positions used (``PositionStore._trim``), so a later location
can take the index of another (C1)."""

from __future__ import annotations

from atp_service.channels.curator import Curator
from atp_service.channels.estate import Channel
from reservation import ChannelRules, Fact, FactKind, Feed, FeedPolicy, Ledger, Limits

T = 1_700_000_000_000


def fact(n: int, sku: str, location: str, quantity: int) -> Fact:
    return Fact(f"e{n}", "pos", FactKind.RECEIPT, sku, location, quantity, T + n)


def test_the_curator_maps_a_channels_locations_anew_when_a_column_goes_and_another_takes_its_index_C1() -> None:
    ledger = Ledger(0, Limits())
    ledger.record_fact(fact(0, "A", "L1", 4))
    ledger.commit(T)
    channel = Channel("pickup", ("L9",), True, ChannelRules(), FeedPolicy())
    curator, feeds = Curator(), {"pickup": Feed("pickup", FeedPolicy(), T)}
    ledger.record_fact(fact(1, "B", "L2", 3))  # column 1, taken back
    curator.curate_shard(0, ledger.store, ["A"], [{"L1": T}], {"pickup": channel}, feeds)  # L9: no column yet
    _, undo, _ = ledger.seal(T + 1)
    ledger.revert(undo)  # its append refused
    ledger.record_fact(fact(2, "A", "L9", 6))  # column 1 again, another location's
    ledger.commit(T + 2)
    urgent, rest = curator.curate_shard(0, ledger.store, ["A"], [{"L9": T + 2}], {"pickup": channel}, feeds)
    assert [(offer[1], offer[2], offer[3]) for offer in urgent + rest] == [("A", "L9", 6)]
