"""Balancing turns of processes sharing a keyspace (``app/balancing.py``), with a live process that
takes no groups: a few turns of each process played over one table of owners, as Redis holds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from atp_service.app.balancing import LEFT_FREE_TURNS, FreeWatch, plan_balance, preference


@dataclass
class Proc:
    address: str
    takes: bool = True  # False: every balance fails (an earlier release), yet it stays registered
    token: str = "1"
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
    assert [p.address for p in space.procs if p.watch.out] == [max("ab", key=lambda a: preference(a, 5))], \
        "not one process first: the one that prefers the group"


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


def test_a_taking_process_below_the_floor_is_left_the_free_groups() -> None:
    """Above the floor with another below it, a process hands over and takes only up to the floor."""
    routes = {0: ("a", 1), 1: ("b", 1)}  # groups 2 and 3 free; c holds none
    assert plan_balance("a", 4, ["a|1", "b|1", "c|1"], {0}, routes, ()) == (None, [])
    assert plan_balance("c", 4, ["a|1", "b|1", "c|1"], set(), routes, ())[1] == sorted(
        [2, 3], key=lambda g: preference("c", g), reverse=True)
    give, take = plan_balance("a", 4, ["a|1", "b|1", "c|1"], {0}, routes, (), out={"c"})
    assert give is None and len(take) == 1  # c counted out: a's share of 4 over two
