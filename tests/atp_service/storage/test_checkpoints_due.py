"""``Checkpoints.due`` (asked of every shard at every housekeeping pass, so it answers the commonest
"no" first) answers as the rule it implements: never while a snapshot is being written; due after
``snapshot_every_entries`` entries, or after ``snapshot_interval_s`` with at least one; forced, due with
at least one entry; otherwise not while another shard's snapshot is in flight or a failure backs off."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from atp_service.config import SnapshotPolicy
from atp_service.storage import durability
from atp_service.storage.durability import Checkpoints
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Nodes

EVERY, INTERVAL_S = 5, 300.0


class _Write:
    def __init__(self, finished: bool) -> None:
        self.finished = finished

    def done(self) -> bool:
        return self.finished


def rule(writing: _Write | None, entries: int, force: bool, since_s: float, in_flight: int, retry_in_s: float) -> bool:
    """The rule, as written before it was reordered."""
    if writing is not None and not writing.done():
        return False
    due = entries >= EVERY or (entries and since_s >= INTERVAL_S)
    if not (due or (force and entries)):
        return False
    if force:
        return True
    return not in_flight and retry_in_s <= 0


@settings(max_examples=300, deadline=None)
@given(writing=st.sampled_from([None, True, False]), entries=st.integers(-2, 8), force=st.booleans(),
       since_s=st.sampled_from([0.0, 299.0, 300.0, 1000.0]), in_flight=st.integers(0, 1),
       retry_in_s=st.sampled_from([-1.0, 0.0, 5.0]))
def test_due_answers_as_the_rule(writing: bool | None, entries: int, force: bool, since_s: float, in_flight: int,
                                 retry_in_s: float) -> None:
    store = LogStore(Nodes(None), "t:", pipeline_max=16)
    policy = SnapshotPolicy(snapshot_every_entries=EVERY, snapshot_interval_s=INTERVAL_S, snapshot_retry_max_s=30.0,
                            snapshot_write_mb_per_s=20.0, snapshot_part_bytes=1 << 20)
    checkpoints = Checkpoints(0, store, policy, seq=100)
    now = 10_000.0
    write = None if writing is None else _Write(writing)
    checkpoints._writing = write  # type: ignore[assignment]
    checkpoints._at, checkpoints._retry_at = now - since_s, now + retry_in_s
    store.snapshots_in_flight = in_flight
    with mock.patch.object(durability.time, "monotonic", return_value=now):
        assert checkpoints.due(100 + entries, force) == rule(write, entries, force, since_s, in_flight, retry_in_s)
