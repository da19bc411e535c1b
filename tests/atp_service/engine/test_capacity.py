"""The orders housekeeping drives on at once (``capacity.next_to_drive``): a bounded number a pass,
going round, so that orders that keep failing never hold back the others."""

from __future__ import annotations

from atp_service.engine.capacity import next_to_drive


def test_orders_driven_go_round_from_the_last_one_driven() -> None:
    pending = {f"o{n}" for n in range(5)}
    after, first = next_to_drive(pending, "", 2)
    assert first == ["o0", "o1"] and after == "o1"
    after, second = next_to_drive(pending, after, 2)  # o0 and o1 failed again: still pending, not first
    assert second == ["o2", "o3"]
    after, third = next_to_drive(pending, after, 2)
    assert third == ["o4", "o0"] and after == "o0"


def test_no_room_drives_nothing() -> None:
    assert next_to_drive({"o1"}, "o0", 0) == ("o0", [])
    assert next_to_drive(set(), "o0", 3) == ("o0", [])
