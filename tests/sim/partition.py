"""Processes cut off from each other over gRPC while every one of them still reaches Redis (``--partition``):
a partition between two hosts (a firewall rule, a network policy, a switch), one way or both; with three
processes, now and then one host cut off from both others.

Leases, owner keys and the log go through Redis, so membership sees nothing: each process keeps its groups,
and only what one process sends another fails — an order's steps (``network.Network``), the calls the edge
forwards to a group's owner, the reservations it asks every owner for (``edge.Edge``), and with
``--forward-streams`` the ReserveStream items sent to owners (``streamcall.SimStreamCall``). Unlike the
network's faults one call at a time, a partition lasts: every step a saga sends across it fails, housekeeping's
retries too, for ticks or for several steps (through the checks and the quiesce between them), while TTLs pass —
so an order whose parts sit on both sides is abandoned, given up or confirmed with its steps unreachable.

A call across a cut is never sent (the connection could not be made), or was in hand when the cut came (served
there, its answer lost: in doubt), or, for an order step, reaches its process later, as the network's late ones
do (TCP sent it again; its sender gave up on it long before). Partitions draw from a stream of their own, and
only with the flag: seeds without it replay as before. The run's end heals them (``network.faulty`` off: "the
processes reaching each other")."""

from __future__ import annotations

import random

from reservation import Reason, Unavailable
from tests.sim.tally import Tally

PARTITION_P = 0.3
"""At a step's start (none in place), the chance two processes are cut off from each other during it."""
LASTING_P = 0.4
"""The chance such a partition outlasts its step: it heals at the start of one of the next steps."""
ISOLATED_P = 0.3
"""With three processes, the chance a partition cuts one off from both others (both ways) rather than from one."""
EVERY = "*"
FATES = ("unsent",) * 4 + ("in_hand",) * 2 + ("late",)
"""What becomes of a call across a cut: never sent, served with its answer lost, or served later (its sender gone)."""


class Partitions:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng = random.Random(f"partition {seed}")
        self.tally = tally
        self.pair: tuple[str, str] | None = None
        self.both_ways = False
        self.span: tuple[int, int | None] = (0, None)  # (first tick, tick it heals at; None: the step's end)
        self.steps_left = 0  # steps a lasting partition outlives its own (0: it heals as the step ends)
        self.now = False  # cut at this tick
        self.in_step = 0  # calls cut in this step (for the trace)

    def draw(self, addresses: list[str]) -> str:
        """At a step's start: a lasting partition goes on (or heals); else maybe a new one; for the trace."""
        self.in_step = 0
        if self.pair is not None and self.steps_left > 0:
            self.steps_left -= 1
            self.span = (0, None) if self.steps_left else (0, self.rng.randint(1, 60))
            self.now = True
            return f"{self._described()} still cut off"
        self.pair, self.now = None, False
        if len(addresses) < 2 or self.rng.random() >= PARTITION_P:
            return ""
        a, b = self.rng.sample(sorted(addresses), 2)
        self.pair, self.both_ways = (a, b), self.rng.random() < 0.5
        if len(addresses) > 2 and self.rng.random() < ISOLATED_P:
            self.pair, self.both_ways = (a, EVERY), True  # ``a`` cut off from every other process
        start = self.rng.randint(0, 30)
        lasting = self.rng.random() < LASTING_P
        self.steps_left = self.rng.randint(1, 3) if lasting else 0
        self.span = (start, None if lasting or self.rng.random() < 0.3 else start + self.rng.randint(1, 80))
        self.tally.partitions += 1
        heals = f"{self.steps_left} step{'s' if self.steps_left > 1 else ''} later" if lasting else \
            "at the step's end" if self.span[1] is None else f"at t{self.span[1]}"
        return f"{self._described()} cut off from t{start}, healing {heals}"

    def tick(self, tick: int) -> None:
        """The step's tick ``tick`` has begun."""
        if self.pair is not None:
            first, heals = self.span
            self.now = tick >= first and (heals is None or tick < heals)

    def end_step(self) -> str:
        """The step's calls are over: a partition not lasting heals now (its quiesce and checks: the
        processes reach each other); a lasting one stays cut; what it cut (trace)."""
        if self.pair is not None and self.steps_left == 0:
            self.pair, self.now = None, False
        elif self.pair is not None:
            self.now = True  # through the quiesce and the checks too: housekeeping's retries fail
        return f"{self.in_step} calls across the partition cut" if self.in_step else ""

    def heal(self) -> None:
        self.pair, self.now, self.steps_left = None, False, 0

    def fate(self, source: str, target: str) -> str | None:
        """What becomes of a call ``source`` sends ``target`` now: None where nothing cuts it, else
        "unsent", "in_hand" or "late" (``FATES``)."""
        if not self.now or self.pair is None or source == target:
            return None
        a, b = self.pair
        if b == EVERY:
            if a not in (source, target):
                return None
        elif (source, target) != self.pair and not (self.both_ways and (target, source) == self.pair):
            return None
        self.tally.partition_cuts += 1
        self.in_step += 1
        return self.rng.choice(FATES)

    def _described(self) -> str:
        assert self.pair is not None
        if self.pair[1] == EVERY:
            return f"{self.pair[0]} <-> every other process"
        return f"{self.pair[0]} {'<->' if self.both_ways else '->'} {self.pair[1]}"


def unreached(address: str) -> Unavailable:
    """A forwarded call never sent: gRPC could not connect to the owner (a definite refusal, nothing done)."""
    return Unavailable(f"sim: failed to connect to all addresses ({address}: cut off)", Reason.STORAGE_UNREACHABLE)


def lost_in_hand(address: str) -> Unavailable:
    """A forwarded change whose connection was cut with it in hand (``forward.refusal_of``: it may have been made)."""
    return Unavailable(f"sim: the owner {address} was lost with this call in hand (cut off)", Reason.OUTCOME_UNKNOWN)
