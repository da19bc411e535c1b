"""Processes agreeing on who is counted out (``FreeWatch``'s reading of another held above the share):
what one process reads, turn by turn, while the others rebalance normally."""

from __future__ import annotations

from atp_service.app.balancing import LEFT_FREE_TURNS, FreeWatch


def test_joiners_taking_what_one_above_the_share_hands_over_are_not_counted_out() -> None:
    """a held all 24 groups when b, c and d joined: it hands one over a turn, and one joiner takes it —
    b and d won every race for 10 periods, c none. a above the share was read as a counting c out:
    healthy c, with nothing ever free for it, was counted out at b (then registered anew)."""
    watch, members = FreeWatch("b", 1.0), ["a|1", "b|1", "c|1", "d|1"]
    routes = {g: ("a", 1) for g in range(24)}
    for now in range(1, 11):
        out, _ = watch.observe(now, 24, members, routes, ())
        assert out == [] and watch.out == set(), now
        routes[now - 1] = ("b" if now % 2 else "d", 1)  # a handed group now - 1 over; b or d took it


def test_a_hand_over_slow_as_a_final_snapshot_does_not_count_out_the_process_it_goes_to() -> None:
    """a, above the share, hands over one group every 5 periods (each one drained, its final
    snapshot written), and c takes each: c took nothing for 4 periods at a time, a read as holding."""
    watch, members = FreeWatch("b", 1.0), ["a|1", "b|1", "c|1"]
    routes = {g: ("a" if g < 8 else "b", 1) for g in range(12)}
    for now in range(1, 22):
        if now % 5 == 0:
            routes[now // 5 - 1] = ("c", 1)
        out, _ = watch.observe(now, 12, members, routes, ())
        assert out == [] and watch.out == set(), now


def test_time_unread_counts_one_period_of_another_held_above_the_share() -> None:
    """p3 took p1's groups just before Redis went away from p4 for a while: back, p4 judged p3's
    holding above the share by the time it did not read, and counted p1 out at its first read."""
    watch, members = FreeWatch("p4", 1.0), ["p1|1", "p3|1", "p4|1"]
    even = {g: (("p1", "p3", "p4")[g // 3], 1) for g in range(9)}
    taken = {g: ("p4" if g >= 6 else "p3", 1) for g in range(9)}
    for now, routes in ((1, even), (2, even), (3, taken), (4, taken)):
        assert watch.observe(now, 9, members, routes, ()) == ([], [])
    assert watch.observe(60, 9, members, taken, ()) == ([], [])
    for now in range(61, 61 + 2 * LEFT_FREE_TURNS):
        watch.observe(now, 9, members, taken, ())
    assert watch.out == {"p1"}, "still counted out once the time it read says so"


def test_the_member_entries_seen_at_an_address_restarted_again_and_again_are_bounded() -> None:
    """Each start of a process registers a new entry (``<address>|<token>``); one at a stable address (a
    StatefulSet's, a host's) restarted within a lease is live all along, and ``FreeWatch`` kept every entry it
    had ever seen there until the address stopped being live: one more per restart (and per registering anew),
    for the life of every other process. It keeps the entries read now and the last few before."""
    watch, routes = FreeWatch("a", 1.0), {g: ("a" if g < 2 else "b", 1) for g in range(4)}
    now = 0
    for start in range(1, 501):  # b restarted 500 times: its old entry and the new one read together, once
        for members in (["a|1", f"b|{start - 1}", f"b|{start}"], ["a|1", f"b|{start}"]):
            now += 1
            watch.observe(now, 4, members, routes, ())
    assert len(watch._registered["b"]) <= 4, len(watch._registered["b"])  # was: 501
    watch.observe(now + 1, 4, ["a|1"], routes, ())  # b's entry lapsed a read (a slow renewal) ...
    seen_taking = watch._taking["b"]
    watch.observe(now + 2, 4, ["a|1", "b|500"], routes, ())  # ... and back: not taken for registering anew
    assert watch._taking["b"] == seen_taking
