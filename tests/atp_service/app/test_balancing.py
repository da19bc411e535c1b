"""Balancing turns of processes sharing a keyspace (``app/balancing.py``), with a live process that
takes no groups: a few turns of each process played over one table of owners, as Redis holds them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from atp_service.app.balancing import LEFT_FREE_TURNS, FreeWatch, plan_balance, preference


@dataclass
class Proc:
    address: str
    takes: bool = True  # False: every balance fails (an earlier release), yet it stays registered
    token: str = "1"
    fails: frozenset[int] = frozenset()  # the groups its takings fail on (recovered, then given back)
    watch: FreeWatch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = FreeWatch(self.address, 1.0)

    @property
    def member(self) -> str:
        return f"{self.address}|{self.token}"


class Keyspace:
    """The owners' table and the registered members; each turn, every process balances once (its
    read, its decision, then its hand-over and takings), one after another. Time: balance periods."""

    def __init__(self, groups: int, procs: list[Proc], owners: dict[int, str]) -> None:
        self.groups, self.procs, self.now = groups, procs, 0.0
        self.routes: dict[int, tuple[str, int]] = {g: (a, 1) for g, a in owners.items()}
        self.hand_overs = 0

    def held(self, address: str) -> set[int]:
        return {g for g, (a, _) in self.routes.items() if a == address}

    def turn(self) -> None:
        self.now += 1
        members = [p.member for p in self.procs]
        for proc in self.procs:
            if not proc.takes:
                continue
            proc.watch.observe(self.now, self.groups, members, self.routes, ())
            give, take = plan_balance(proc.address, self.groups, members, self.held(proc.address), self.routes, (),
                                      proc.watch.out)
            if give is not None:
                del self.routes[give]
                self.hand_overs += 1
            for group in take:
                if group not in proc.fails:
                    self.routes.setdefault(group, (proc.address, 1))

    def settle(self, turns: int) -> None:
        for _ in range(turns):
            self.turn()

    def counts(self) -> dict[str, int]:
        return {p.address: len(self.held(p.address)) for p in self.procs}


def test_a_group_left_free_by_a_process_that_takes_none_is_taken_above_share() -> None:
    """Every healthy process at its share (2 of 6 over three), a group given up by a process that
    takes none (an earlier release's, its every balance failing) stayed free: nobody served it."""
    space = Keyspace(6, [Proc("a"), Proc("b"), Proc("x", takes=False)],
                     {0: "a", 1: "a", 2: "b", 3: "b", 4: "x"})  # group 5: x's shard stopped working
    space.settle(LEFT_FREE_TURNS + 3)
    assert len(space.routes) == 6, "a group left free stays unserved"
    before, hand_overs = dict(space.routes), space.hand_overs
    space.settle(50)
    assert space.routes == before and space.hand_overs == hand_overs, "the group taken above share goes back and forth"
    assert space.routes[5][0] == max("ab", key=lambda a: preference(a, 5)), "not the one that prefers the group"
    assert [p.watch.out for p in space.procs if p.takes] == [{"x"}, {"x"}], \
        "the other, its wait ended by that taking, still counts x in: it keeps free what x lacks"


def test_a_starved_process_that_takes_none_no_longer_makes_the_others_hand_over_and_take_back() -> None:
    """A registered process holding nothing, never taking: the others, above the floor, each handed a
    group over to it, then took it back below their share, then handed it over again, without end —
    each hand-over a drain, a final snapshot and a recovery, the group unserved meanwhile."""
    space = Keyspace(4, [Proc("a"), Proc("b"), Proc("x", takes=False)], {0: "a", 1: "a", 2: "b", 3: "b"})
    space.settle(LEFT_FREE_TURNS + 6)
    assert len(space.routes) == 4
    hand_overs = space.hand_overs
    space.settle(50)
    assert space.hand_overs == hand_overs and len(space.routes) == 4


def test_a_process_counted_out_is_counted_again_once_it_registers_anew_and_gets_its_share() -> None:
    """The earlier release's process upgraded (restarted: a new registration, and it takes): what the
    others took above share is handed over to it, and the turns settle."""
    x = Proc("x", takes=False)
    space = Keyspace(6, [Proc("a"), Proc("b"), x], {0: "a", 1: "a", 2: "b", 3: "b", 4: "x"})
    space.settle(LEFT_FREE_TURNS + 3)
    assert len(space.routes) == 6
    x.takes, x.token = True, "2"
    space.settle(12)
    assert space.counts() == {"a": 2, "b": 2, "x": 2}
    assert not any(p.watch.out for p in space.procs)
    hand_overs = space.hand_overs
    space.settle(50)
    assert space.hand_overs == hand_overs


def test_a_process_counted_out_is_counted_again_once_it_is_seen_taking() -> None:
    watch = FreeWatch("a", 1.0)
    members = ["a|1", "x|1"]
    for now in range(1, LEFT_FREE_TURNS + 3):
        out, again = watch.observe(now, 4, members, {0: ("a", 1), 1: ("a", 1)}, ())
    assert watch.out == {"x"}
    out, again = watch.observe(10, 4, members, {0: ("a", 1), 1: ("a", 1), 2: ("x", 2)}, ())
    assert (out, again, watch.out) == ([], ["x"], set())


def test_a_healthy_process_joining_is_never_counted_out() -> None:
    """A process that takes gets what is handed over to it; nobody takes it back meanwhile (the giver
    takes only up to the floor while another is below it), so nothing stays free to count it out."""
    procs = [Proc("a"), Proc("b")]
    space = Keyspace(7, procs, {g: ("a" if g < 4 else "b") for g in range(7)})
    space.settle(3)
    for joining in ("c", "d", "e"):
        procs.append(Proc(joining))
        space.settle(LEFT_FREE_TURNS * 4)
        assert len(space.routes) == 7
        assert not any(p.watch.out for p in procs), "a process that takes was counted out"
        counts = space.counts().values()
        assert min(counts) >= 7 // len(procs) and max(counts) <= -(-7 // len(procs))


def test_what_a_process_below_the_floor_lacks_is_left_free_for_it_and_no_more() -> None:
    """Another below its floor, a process takes up to its share only what that one does not lack, and
    hands a group over only while fewer are free than that one lacks."""
    members = ["a|1", "b|1", "c|1"]
    routes = {0: ("a", 1), 1: ("b", 1)}  # groups 2 and 3 free; c holds none, its floor 1
    assert plan_balance("a", 4, members, {0}, routes, ()) == (None, [max([2, 3], key=lambda g: preference("a", g))])
    assert plan_balance("a", 4, members, {0}, {**routes, 2: ("b", 1)}, ()) == (None, [])  # 3: what c lacks
    assert plan_balance("c", 4, members, set(), routes, ())[1] == sorted(
        [2, 3], key=lambda g: preference("c", g), reverse=True)
    assert plan_balance("a", 4, members, {0, 2}, {**routes, 2: ("a", 1), 3: ("b", 1)}, ()) == (
        min([0, 2], key=lambda g: preference("a", g)), [])  # nothing free for c: a, above its floor, hands over
    assert plan_balance("a", 4, members, {0, 2}, {0: ("a", 1), 2: ("a", 1)}, ()) == (None, [])  # 1 and 3 free
    give, take = plan_balance("a", 4, members, {0}, routes, (), out={"c"})
    assert give is None and len(take) == 1  # c counted out: a's share of 4 over two


@dataclass
class SlowProc(Proc):
    """A process whose balance turn waits for each group it takes to be recovered (a big group):
    ``recovery`` turns during which it reads, takes and hands over nothing."""

    recovery: int = 0
    blocked: int = 0
    registrations: int = 0


def test_a_healthy_process_slow_to_recover_is_not_left_starved_for_good() -> None:
    """A process joining takes a group handed over to it, then recovers it for longer than a group
    may stay free; the next group handed over to it meanwhile is taken by the others, which count it
    out: it stayed at one group of six for good, the others above share, though it takes."""
    slow = SlowProc("c", recovery=8)
    procs: list[Proc] = [Proc("a"), Proc("b")]
    space = SlowKeyspace(6, procs, {g: ("a" if g < 3 else "b") for g in range(6)})
    space.settle(2)
    procs.append(slow)
    space.settle(200)
    assert space.counts() == {"a": 2, "b": 2, "c": 2}, "a process that takes is left below its share for good"
    assert not any(p.watch.out for p in procs), "a process that takes stays counted out"


class SlowKeyspace(Keyspace):
    """As ``Keyspace``, a ``SlowProc`` taking one group at a time, each taking blocking its turns
    for its ``recovery``; a process whose watch says so registers anew (a new member entry)."""

    def turn(self) -> None:
        self.now += 1
        members = [p.member for p in self.procs]
        for proc in self.procs:
            if isinstance(proc, SlowProc) and proc.blocked:
                proc.blocked -= 1
                continue
            proc.watch.observe(self.now, self.groups, members, self.routes, ())
            if proc.watch.register_anew:
                proc.token += "+"
            give, take = plan_balance(proc.address, self.groups, members, self.held(proc.address), self.routes, (),
                                      proc.watch.out)
            if give is not None:
                del self.routes[give]
                self.hand_overs += 1
            if isinstance(proc, SlowProc) and take:
                self.routes.setdefault(take[0], (proc.address, 1))
                proc.blocked = proc.recovery
                continue
            for group in take:
                self.routes.setdefault(group, (proc.address, 1))


def settled(groups: int, addresses: str) -> dict[int, str]:
    """The owners' table once ``addresses`` balanced each at its share (the turns played till still)."""
    space = Keyspace(groups, [Proc(a) for a in addresses], {})
    space.settle(LEFT_FREE_TURNS * 4)
    assert len(space.routes) == groups
    return {g: a for g, (a, _) in space.routes.items()}


@pytest.mark.parametrize(("groups", "addresses"), [(17, "abcd"), (14, "abcd"), (23, "abcde"), (16, "abc"), (17, "abc")])
def test_every_group_a_graceful_stop_hands_over_is_owned_again_within_one_turn_of_each_process(
        groups: int, addresses: str) -> None:
    """One of a few processes stops gracefully (every group handed over, its entry gone): the groups not
    divisible by those left, each of them below the floor of its new share, each took only up to the
    floor while another was below it — one group stayed free past every process's next turn (then a
    few periods more, its process counted out), where each process taking up to its share left none."""
    owners = settled(groups, addresses)
    for stopper in addresses:
        rest = [a for a in addresses if a != stopper]
        for order in itertools.permutations(rest):
            space = Keyspace(groups, [Proc(a) for a in order], {g: a for g, a in owners.items() if a != stopper})
            space.turn()
            assert len(space.routes) == groups, f"{stopper} stopped, turns of {order}: a group handed over left free"
            assert not any(p.watch.out for p in space.procs)


@pytest.mark.parametrize(("groups", "addresses"), [(16, "abc"), (13, "abcd"), (17, "abcd")])
def test_a_process_stopping_slowly_has_nothing_kept_free_for_it(groups: int, addresses: str) -> None:
    """A stop's hand-overs slow (big groups' final snapshots), a balance turn of each other process
    after each: the stopper, out of the members first, is live only by the groups it still holds. What
    it lacked below its floor was kept free for it, the groups it handed over waiting for the end of
    its stop though the others had room in their shares; nor is anything handed over to it."""
    owners = settled(groups, addresses)
    for stopper in addresses:
        space = Keyspace(groups, [Proc(a) for a in addresses if a != stopper], {
            g: a for g, a in owners.items() if a != stopper})
        leaving = sorted(g for g, a in owners.items() if a == stopper)
        space.routes.update({g: (stopper, 1) for g in leaving})
        while leaving:
            del space.routes[leaving.pop()]
            space.turn()
            share = -(-groups // (len(space.procs) + (1 if leaving else 0)))
            assert len(space.routes) == groups or all(n == share for n in space.counts().values()), \
                f"{stopper} stopping: a group left free below the others' shares"
        assert len(space.routes) == groups and space.hand_overs == 0




def test_a_process_whose_taking_of_one_group_fails_is_counted_out_though_it_took_another() -> None:
    """A process joins; the first group handed over to it it cannot take (its recovery fails there,
    given back each time), the next it takes. Seen taking after the first fell free, it was never
    counted out for it, and what it lacked below its floor was kept free for it: that group answered
    nobody for as long as the process lived, though the others could serve it."""
    procs = [Proc("a"), Proc("b")]
    space = Keyspace(6, procs, {g: ("a" if g < 4 else "b") for g in range(6)})
    first = min(range(4), key=lambda g: preference("a", g))  # the group a hands over first
    procs.append(Proc("y", fails=frozenset({first})))
    space.settle(LEFT_FREE_TURNS * 4)
    assert len(space.routes) == 6, f"group {first} left free for good though a live process could take it"
    assert [p.watch.out for p in procs if p.address != "y"] == [{"y"}, {"y"}]
    hand_overs = space.hand_overs
    space.settle(50)
    assert space.hand_overs == hand_overs



def test_a_group_free_while_processes_that_take_none_hold_their_floor_is_taken() -> None:
    """A rolling upgrade: two earlier release's processes (taking none) at the floor of their share,
    a process of the new version stops gracefully. The group it handed over, the others at their share
    of 7 over four (2, 2, 1, 1), answered nobody for as long as those two lived: only a process below
    its floor was counted out, though these two, below their share, took nothing either."""
    procs = [Proc("a"), Proc("b"), Proc("x", takes=False), Proc("y", takes=False)]
    space = Keyspace(7, procs, {0: "a", 1: "a", 2: "b", 3: "b", 4: "x", 5: "y"})  # 6: handed over by a stop
    space.settle(LEFT_FREE_TURNS * 4)
    assert len(space.routes) == 7, "a group left free for good though a live process could take it"
    hand_overs = space.hand_overs
    space.settle(50)
    assert space.hand_overs == hand_overs


def test_a_process_counted_out_while_its_recoveries_held_its_turns_is_counted_again_once_at_its_floor() -> None:
    """Counted out below its floor (its turns held by a recovery), then at the floor of the shares
    once another process joined, it took nothing more: no taking to be seen, it stayed counted out
    for good — the others' shares counted without it, ``ATPProcessNotTaking`` firing on it."""
    watch, members = FreeWatch("a", 1.0), ["a|1", "b|1", "x|1"]
    routes = {0: ("a", 1), 1: ("a", 1), 2: ("a", 1), 3: ("b", 1), 4: ("b", 1), 5: ("b", 1), 6: ("x", 1), 7: ("x", 1)}
    for now in range(1, LEFT_FREE_TURNS + 3):  # group 8 free; x, below its floor of 3, takes nothing
        watch.observe(now, 9, members, routes, ())
    assert watch.out == {"x"}
    taken = {**routes, 8: ("y", 1), 1: ("y", 1)}  # y joins and takes: every process at 2 or 3, nothing free
    out, again = watch.observe(10, 9, [*members, "y|1"], taken, ())
    assert (out, again, watch.out) == ([], ["x"], set())


def test_a_process_holding_what_another_counts_out_is_read_as_its_counting_out() -> None:
    """p3, back from Redis, counts p1 out (it saw p1 leave a group free), took p1's part, and holds
    twice its share as p4 counts it; p4, which never saw a group free, counted p1 in and sat at its
    share for good: p3 at twice p4's load, and p4 lacking what it would get with p1 counted out."""
    watch, members = FreeWatch("p4", 1.0), ["p1|1", "p3|1", "p4|1"]
    routes = {g: ("p3" if g < 6 else "p4", 1) for g in range(9)}
    held = 2 * LEFT_FREE_TURNS  # periods p3 holds above, handing nothing over (nothing unserved: no haste)
    for now in range(1, held + 1):
        assert watch.observe(now, 9, members, routes, ()) == ([], [])
    out, _ = watch.observe(held + 2, 9, members, routes, ())
    assert [(c.address, c.held_by) for c in out] == [("p1", "p3")] and watch.out == {"p1"}
    give, take = plan_balance("p4", 9, members, {6, 7, 8}, routes, (), watch.out)
    assert (give, take) == (None, [])  # below its floor now (4 of 9 over two), nothing free for it
    anew = []
    for now in range(held + 3, held + 2 * LEFT_FREE_TURNS + 3):
        watch.observe(now, 9, members, routes, ())
        anew.append(watch.register_anew)
    assert any(anew), "it registers anew, for p3 to count it again and hand it its share"


def test_time_a_process_did_not_read_is_one_period_of_its_watch() -> None:
    """Back after Redis was away for a while, a process judged what it saw before by the time it did
    not see: every process that would take a group free before and after was counted out at once."""
    watch, members = FreeWatch("a", 1.0), ["a|1", "b|1"]
    routes = {0: ("a", 1), 1: ("a", 1), 2: ("b", 1)}  # group 3 free; b below its share
    watch.observe(1, 4, members, routes, ())
    assert watch.observe(60, 4, members, routes, ()) == ([], [])
    for now in range(61, 60 + LEFT_FREE_TURNS):
        assert watch.observe(now, 4, members, routes, ())[0] == []
    out, _ = watch.observe(60 + LEFT_FREE_TURNS + 1, 4, members, routes, ())
    assert [c.address for c in out] == ["b"]


def test_a_process_counted_out_is_counted_again_at_its_floor_though_the_others_still_rebalance() -> None:
    """Counted out below its floor, then at the floor of the shares once another joined, while a
    process above its share and the joiner below its floor had yet to rebalance: it was counted in
    only once every process held from the floor to the share — the others' shares counted without it,
    its groups as if nobody's, and the joiner never handed its part."""
    watch, members = FreeWatch("a", 1.0), ["a|1", "b|1", "x|1"]
    routes = {**{g: ("a", 1) for g in range(4)}, **{g: ("b", 1) for g in range(4, 8)}, 8: ("x", 1), 9: ("x", 1)}
    now = 0
    while not watch.out and now < 20:  # group 10 free; x, below its floor of 3, takes nothing
        now += 1
        watch.observe(now, 11, members, routes, ())
    assert watch.out == {"x"}
    routes[10] = ("a", 1)  # taken above share, at a's turn
    out, again = watch.observe(now + 1, 11, [*members, "c|1"], routes, ())  # c joins: x's floor is 2
    assert (out, again, watch.out) == ([], ["x"], set())
    give, _ = plan_balance("a", 11, [*members, "c|1"], set(range(4)) | {10}, routes, (), watch.out)
    assert give is not None, "a, above the share that counts x, hands a group over for c"


def test_a_group_kept_for_a_process_counted_out_is_not_left_free_for_good() -> None:
    """A never-taker below its floor is counted out; the two at their floor whose takings fail on the
    free group were judged counting everyone — the group kept for the one counted out — so they were
    never counted out, and the two at the share took nothing: the group stayed free for good."""
    watch, members = FreeWatch("a", 1.0), ["a|1", "b|1", "p|1", "q|1", "x|1"]
    routes = {0: ("a", 1), 1: ("a", 1), 2: ("b", 1), 3: ("b", 1), 4: ("p", 1), 6: ("q", 1)}  # 5 free
    now = 0
    while not watch.out and now < 20:  # x, below its floor of 1, takes nothing
        now += 1
        watch.observe(now, 7, members, routes, ())
    assert watch.out == {"x"}
    for later in range(now + 1, now + 60):  # p and q fail on group 5 at each of their turns
        watch.observe(later, 7, members, routes, ())
    assert {"p", "q"} <= watch.out, "below the share with a group free that nobody lacks: they would take it"
    assert plan_balance("a", 7, members, {0, 1}, routes, (), watch.out)[1] == [5]
