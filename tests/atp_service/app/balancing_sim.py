"""A random-turn simulator of the processes balancing shard groups over one keyspace
(``app/balancing.py``): joins, kill -9, restarts, partitions from Redis, graceful stops (slow or
not), processes that take nothing (an earlier release), takings that fail on some groups and
recoveries that hold a process's turns, in a random order of turns each period. Then a quiet spell,
and what must hold once it is over (``violations``).

    python -m tests.atp_service.app.balancing_sim [--scenarios 300] [--first 0]

Time is in balance periods. A lease, or a member entry, not renewed for ``LEASE_TURNS`` lapses.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from atp_service.app.balancing import FreeWatch, plan_balance

LEASE_TURNS = 3
CHAOS_TURNS = 60
QUIET_TURNS = 400  # past the longest wait of a passed-over process (PASSED_OVER_MAX doublings)
STILL_TURNS = 30  # the last turns of the quiet spell: nothing handed over or taken


@dataclass
class Proc:
    address: str
    token: int = 1
    takes: bool = True  # False: an earlier release, registered, every balance failing
    fails: frozenset[int] = frozenset()  # groups its takings fail on
    recovery: int = 0  # turns a taking holds its balance turns (one group a turn then)
    handover: int = 0  # turns a hand-over holds its balance turns (drained, a final snapshot), the lease kept
    handing: int | None = None  # the group being handed over
    up_since: int = 0  # the turn it last came up (joined, back, restarted)
    state: str = "up"  # up | down (killed or cut off from Redis) | stopping | gone
    blocked: int = 0
    last_seen: int = 0  # the last turn it renewed its member entry and leases
    watch: FreeWatch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = FreeWatch(self.address, 1.0)

    @property
    def healthy(self) -> bool:
        return self.takes and not self.fails


class Estate:
    def __init__(self, rng: random.Random, groups: int) -> None:
        self.rng, self.groups, self.now = rng, groups, 0
        self.procs: list[Proc] = []
        self.routes: dict[int, tuple[str, int]] = {}
        self.changes = 0  # hand-overs and takings
        self.log: list[str] = []
        self.false_outs: list[str] = []  # a healthy process counted out while up and taking all along (--outs)

    def proc(self, address: str) -> Proc:
        return next(p for p in self.procs if p.address == address)

    def members(self) -> list[str]:
        return [f"{p.address}|{p.token}" for p in self.procs
                if p.state == "up" or (p.state == "down" and self.now - p.last_seen <= LEASE_TURNS)]

    def held(self, address: str) -> set[int]:
        return {g for g, (a, _) in self.routes.items() if a == address}

    def lapse(self) -> None:
        for p in self.procs:
            if p.state == "down" and self.now - p.last_seen > LEASE_TURNS:
                for g in self.held(p.address):
                    del self.routes[g]

    def turn(self) -> None:
        self.now += 1
        self.lapse()
        members = self.members()
        order = [p for p in self.procs if p.state in ("up", "stopping")]
        self.rng.shuffle(order)
        for p in order:
            p.last_seen = self.now
            if p.state == "stopping":
                self.stop_step(p)
            elif p.blocked:
                p.blocked -= 1
                if not p.blocked and p.handing is not None:  # the hand-over ends: the lease given back
                    if self.routes.get(p.handing, ("",))[0] == p.address:  # not lapsed meanwhile
                        del self.routes[p.handing]
                    p.handing = None
            elif p.takes:
                self.balance(p, members)

    def stop_step(self, p: Proc) -> None:
        held = self.held(p.address)
        if held:
            del self.routes[min(held)]
            self.changes += 1
        else:
            p.state = "gone"

    def balance(self, p: Proc, members: list[str]) -> None:
        out, _ = p.watch.observe(float(self.now), self.groups, members, self.routes, ())
        for c in out:
            q = self.proc(c.address)
            if q.state == "up" and q.healthy and not (q.recovery or q.handover) and self.now - q.up_since > 12:
                self.false_outs.append(f"t{self.now} {p.address} counts out healthy {c}")
        if p.watch.register_anew:
            p.token += 1
        give, take = plan_balance(p.address, self.groups, members, self.held(p.address), self.routes, (),
                                  p.watch.out)
        if give is not None:
            self.changes += 1
            if p.handover:
                p.handing, p.blocked = give, p.handover
                return
            del self.routes[give]
        for group in take:
            if group in p.fails or group in self.routes:
                continue
            self.routes[group] = (p.address, 1)
            self.changes += 1
            if p.recovery:
                p.blocked = p.recovery
                break

    # Events of the chaos spell.

    def join(self, name: str) -> None:
        kind = self.rng.random()
        p = Proc(name, last_seen=self.now, up_since=self.now, handover=self.rng.choice((0, 0, 1, 2, 4)))
        if kind < 0.1:
            p.takes = False
        elif kind < 0.2:
            p.fails = frozenset(self.rng.sample(range(self.groups), k=min(self.groups, self.rng.randint(1, 2))))
        elif kind < 0.35:
            p.recovery = self.rng.randint(1, 8)
        self.procs.append(p)
        self.log.append(f"t{self.now} join {name} takes={p.takes} fails={sorted(p.fails)} recovery={p.recovery} "
                        f"handover={p.handover}")

    def event(self, names: list[str]) -> None:
        up = [p for p in self.procs if p.state == "up"]
        down = [p for p in self.procs if p.state == "down"]
        roll = self.rng.random()
        if roll < 0.25 and len(self.procs) < 7:
            for _ in range(self.rng.choice((1, 1, 2, 3))):  # several at once: a scale-out
                self.join(names.pop())
        elif roll < 0.45 and up:
            p = self.rng.choice(up)
            p.state = "down"
            self.log.append(f"t{self.now} down {p.address}")
        elif roll < 0.65 and down:
            p = self.rng.choice(down)
            restart = self.rng.random() < 0.5
            if restart:  # a new process at the same address: a new entry, nothing remembered
                p.token, p.watch, p.blocked, p.handing = p.token + 1, FreeWatch(p.address, 1.0), 0, None
            p.state, p.last_seen, p.up_since = "up", self.now, self.now
            self.log.append(f"t{self.now} {'restart' if restart else 'back'} {p.address}")
        elif roll < 0.75 and len(up) > 1:
            p = self.rng.choice(up)
            p.state = "stopping"
            self.log.append(f"t{self.now} stop {p.address}")


def run(seed: int) -> tuple[Estate, list[str]]:
    rng = random.Random(seed)
    estate = Estate(rng, rng.randint(2, 24))
    names = [f"p{i}" for i in range(30, 0, -1)]
    for _ in range(rng.randint(1, 4)):
        estate.join(names.pop())
    for _ in range(CHAOS_TURNS):
        if rng.random() < 0.15:
            estate.event(names)
        estate.turn()
    for p in estate.procs:  # the quiet spell: whoever is down comes back, as it was
        if p.state == "down":
            p.state, p.last_seen, p.up_since = "up", estate.now, estate.now
    for _ in range(QUIET_TURNS - STILL_TURNS):
        estate.turn()
    before = (estate.changes, dict(estate.routes))
    for _ in range(STILL_TURNS):
        estate.turn()
    return estate, violations(estate, before)


def violations(estate: Estate, before: tuple[int, dict[int, tuple[str, int]]]) -> list[str]:
    found = []
    up = [p for p in estate.procs if p.state == "up"]
    if not any(p.takes for p in up):
        return []
    takers = [p for p in up if p.takes]
    free = [g for g in range(estate.groups) if g not in estate.routes and any(g not in p.fails for p in takers)]
    if free:
        found.append(f"groups free at the end: {free}")
    if (estate.changes, estate.routes) != before and not any(p.fails for p in up):  # those: a slowing pace
        found.append(f"still handing over or taking in the last {STILL_TURNS} turns")
    healthy = {p.address for p in up if p.healthy}
    for p in up:
        if p.takes and p.watch.out & healthy:
            found.append(f"{p.address} counts out healthy {sorted(p.watch.out & healthy)}")
    if all(p.healthy and not p.recovery for p in up):
        counts = [len(estate.held(p.address)) for p in up]
        least, share = estate.groups // len(up), -(-estate.groups // len(up))
        if min(counts) < least or max(counts) > share:
            found.append(f"counts {counts} outside [{least}, {share}]")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--outs", action="store_true", help="also print healthy processes counted out on the way")
    args = parser.parse_args()
    bad = 0
    for seed in range(args.first, args.first + args.scenarios):
        estate, found = run(seed)
        found += estate.false_outs if args.outs else []
        if found:
            bad += 1
            print(f"seed {seed} groups={estate.groups}: {'; '.join(found)}")
            if args.verbose:
                print("  " + "\n  ".join(estate.log))
    print(f"{args.scenarios} scenarios, {bad} bad")


if __name__ == "__main__":
    main()
