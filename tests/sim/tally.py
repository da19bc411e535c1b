"""How many faults of each kind a simulation run injected: a run that held every invariant only
says something if the faults did happen, so ``python -m tests.sim`` prints these."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Tally:
    cancelled: int = 0  # callers that gave up before their answer came
    cancelled_pending: int = 0  # ... while appends waited for Redis's answer
    cancelled_paused: int = 0  # ... during a write pause
    late_landed: int = 0  # scripts that reached Redis after their caller was told they failed
    late_refused: int = 0  # such scripts refused on arrival (fence, epoch, stream's newest id)
    pauses: int = 0  # Redis write pauses
    crashes: int = 0
    stops: int = 0  # graceful stops (then a restart)
    lost: int = 0  # appends answered "not landed"
    doubt: int = 0  # appends that landed, their caller told they failed
    late: int = 0  # appends answered "timed out", still on their way
    channel_faults: int = 0  # channel writes lost, in doubt or late
    channel_late_landed: int = 0
    cross_shard: int = 0  # commands spanning shards (reserves, SHIPMENTs naming a reservation)
    sagas: int = 0  # of those reserves, on a cluster (odd seeds): orders decided by sagas

    def count_outcome(self, outcome: str) -> None:
        if outcome in ("lost", "doubt", "late"):
            setattr(self, outcome, getattr(self, outcome) + 1)

    def late_arrived(self, landed: bool) -> None:
        if landed:
            self.late_landed += 1
        else:
            self.late_refused += 1

    def add(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (f"{self.cancelled} cancellations ({self.cancelled_pending} with appends pending, "
                f"{self.cancelled_paused} in write pauses), late landings {self.late_landed} landed / "
                f"{self.late_refused} refused, {self.pauses} write pauses, {self.crashes} crashes, "
                f"{self.stops} graceful stops, "
                f"appends {self.lost} lost / {self.doubt} in doubt / {self.late} late, "
                f"{self.channel_faults} channel writes failed ({self.channel_late_landed} landed late), "
                f"{self.cross_shard} cross-shard commands ({self.sagas} reserves as sagas on a cluster)")
