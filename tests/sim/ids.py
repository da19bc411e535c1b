"""Reservation id claims as the simulated Redis takes them (``atp_service/storage/ids.py``), where several
processes share the keyspace: the service's own ``IdClaims`` runs as it is, and its script calls reach
this store (``SimNodes.run``). Each call is a round trip (a paused process's waits, a dead one's fails)
whose outcome is drawn from a stream of its own (``faults``, so the seed's other draws stay as they were):
answered; lost (never reached Redis); in doubt (ran, its answer lost); or late (on its way: it arrives at
a later claim call of any process, or never) — the late ones are what a claim sent again must settle.

Redis runs ``CLAIM_SCRIPT``: the id's claim is set to the home group unless it holds one, and the
group it holds is returned. Claims never expire here: a run lasts minutes of simulated time, far
inside a claim's life (its record's TTL, the retention, a margin).
"""

from __future__ import annotations

import random
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.ids import CLAIM_SCRIPT
from atp_service.storage.nodes import Call
from tests.sim.full import RedisFull, oom, refuses
from tests.sim.tally import Tally

OUTCOMES = ("ok",) * 17 + ("lost", "doubt", "late")
LATE_ARRIVES_P = 0.5
"""The chance that a claim still on its way arrives at the next claim call (before it)."""


class SimIdClaims:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.faults = random.Random(f"id claims {seed}")
        self.tally = tally
        self.held: dict[str, int] = {}
        """Each claimed id's key -> the group it holds."""
        self.late: list[Call] = []
        self.full: RedisFull | None = None  # ``--redis-full``

    async def run(self, proc: Any, calls: list[Call]) -> list[Any]:
        """``Nodes.run`` of claim script calls, sent by ``proc`` (``leased.ProcessLog``)."""
        await proc.round_trip(self.faults)  # raises ConnectionError where the process is dead
        arriving = [call for call in self.late if self.faults.random() < LATE_ARRIVES_P]
        self.late = [call for call in self.late if call not in arriving]
        for call in arriving:
            if not self._refused(call):  # a full Redis refuses it on arrival: gone
                self._land(call)
        replies: list[Any] = []
        for call in calls:
            assert call.script is CLAIM_SCRIPT, call.script
            outcome = self.faults.choice(OUTCOMES)
            self.tally.id_claims += 1
            self.tally.id_claim_faults += outcome != "ok"
            if outcome == "lost":
                replies.append(RedisConnectionError("sim: id claim lost (never reached Redis)"))
            elif outcome == "late":
                self.late.append(call)
                replies.append(RedisTimeoutError("sim: id claim timed out (still on its way)"))
            elif self._refused(call):
                replies.append(RedisTimeoutError("sim: id claim timed out (refused OOM)") if outcome == "doubt"
                               else oom())
            else:
                held = self._land(call)
                replies.append(RedisTimeoutError("sim: id claim timed out (it ran)") if outcome == "doubt"
                               else str(held).encode())
        return replies

    def _refused(self, call: Call) -> bool:
        """A claim's write refused OOM (``full.py``): Redis at its maxmemory; a mere read is answered."""
        return int(call.args[1]) != 0 and refuses(self.full)

    def _land(self, call: Call) -> int:
        """``CLAIM_SCRIPT``: set unless held (only looked at where its time to live is 0: -1 if none);
        the group held."""
        key, home = call.keys[0], int(call.args[0])
        if int(call.args[1]) == 0:
            return self.held.get(key, -1)
        held = self.held.setdefault(key, home)
        self.tally.id_claims_refused += held != home
        return held
