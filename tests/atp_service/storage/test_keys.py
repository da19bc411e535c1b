"""The Redis keys the operations guide names are the keys the service writes: an operator looking up
a fence, an owner key or a lease with ``redis-cli`` finds them under the names the guide gives."""

from __future__ import annotations

import re
from pathlib import Path

from atp_service.storage.keys import CHANNELS, Keyspace

OPERATIONS = Path(__file__).resolve().parents[3] / "docs/OPERATIONS.md"
SHARD = 7


def _written() -> set[str]:
    keys = Keyspace("<prefix>")
    per_group = [keys.log, keys.snap, keys.snap_parts, keys.snap_parts_try, keys.snap_pieces, keys.fence, keys.owner,
                 lambda g: keys.tag(g) + "lease", lambda g: keys.snap(g, 1)[:-1] + "<n>",
                 lambda g: keys.snap_parts(g, 1)[:-1] + "<n>"]
    return {key(SHARD).replace(f"{{g{SHARD}}}", "{g<shard>}") for key in per_group} | {
        keys.claims, keys.claimants, keys.members, keys.meta,
        keys.owner(CHANNELS), keys.fence(CHANNELS),  # the channel feeds' group
        keys.reservation_id("<id>")}


def test_every_key_of_a_shard_the_operations_guide_names_is_one_the_service_writes() -> None:
    named = set(re.findall(r"`(<prefix>[^`]*)`", OPERATIONS.read_text()))
    assert named, "the guide names no key"
    assert not named - _written(), f"the guide names keys the service does not write: {sorted(named - _written())}"
