"""The real ``ChannelDesk`` over an in-process stand-in for ``ChannelStore``, with a two-channel estate.

``SimChannelStore`` mirrors ``ChannelStore`` as ``SimLog`` mirrors ``LogStore``: a write waits in
``pending`` until the driver pumps it with an outcome (``ok``, ``lost``, ``doubt``, ``late``), and
the write script's checks are modelled — the epoch (FENCED: a dead instance's write), the desk's
fence token (STALE) and each stream's newest version (TAKEN; LOST: behind the write's, or a settle's link) — all before
any change, so a refused write changes nothing. It shares the log's write pause and epoch: one Redis.

The desk's own loop is not run: it sleeps on wall time (throttle waits, backoff after a failed write),
which would make a seed's interleaving depend on the machine. ``DeskRunner`` runs its rounds
(``ChannelDesk.run_round``) when the driver says, as tasks the driver may find mid-write at any tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from atp_service.channels.desk import ChannelDesk
from atp_service.channels.estate import parse_estate
from atp_service.storage.channel_store import StreamLost, WriteRefused
from atp_service.storage.channel_wire import StartMarker, values_of
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.tasks import cancel_and_wait
from reservation import ChannelUpdate, Key, Published
from tests.sim.full import oom, refuses
from tests.sim.settlefaults import timed_out
from tests.sim.simlog import SimLog

ESTATE = parse_estate({
    "locations": [{"ids": ["L1", "L2"], "type": "store"}, {"id": "L3", "type": "dc", "safety_stock": 2}],
    # What Reserves name with ``--groups`` alone (``groups.py``): lines naming a group, split by the channel's
    # strategy (the estate's default, priority, for a channel not configured), and Q4's defaults for new
    # positions (a unit at every store's, two at L3's). Neither changes what the desk publishes.
    "groups": {"stores": {"type": "store"}, "near": ["L2", "L3"], "all": ["L3", "L1", "L2"]},
    "safety_stock": {"store": 1},
    "channels": [
        # per location, like store pickup: a stock-out line (C2: published at once) above 0
        {"name": "pickup", "sells_from": ["L1", "L2"], "per_location": True, "buffer_units": 1,
         "low_stock_threshold": 1, "throttle_ms": 0, "rate_limit_per_s": 1000.0, "burst": 1000},
        # one number per SKU over every location, throttled: pending values coalesce (C2)
        {"name": "web", "sells_from": ["L3", "L1", "L2"], "buffer_percent": 10.0, "allocation": 25,
         "strategy": "most_available", "throttle_ms": 2000, "rate_limit_per_s": 1000.0, "burst": 1000},
    ],
})
Batch = tuple[str, list[ChannelUpdate]]


class _Write:
    __slots__ = ("batches", "done", "epoch", "token")

    def __init__(self, batches: list[Batch], token: int, epoch: str, done: asyncio.Future[None]) -> None:
        self.batches, self.token, self.epoch, self.done = batches, token, epoch, done


class SimChannelStore:
    def __init__(self, log: SimLog) -> None:
        self.log = log
        self.streams: dict[str, list[ChannelUpdate]] = defaultdict(list)
        self.state: dict[str, dict[Key, Published]] = defaultdict(dict)
        self.redis_fence = 0  # <prefix>avail-fence in Redis
        self.token: int | None = None
        self.epoch = "0"  # UNCLAIMED until the world's instance claims (``World.boot``)
        self.pending: list[_Write] = []
        self.late: list[_Write] = []
        self.on_landed: Callable[[str, list[ChannelUpdate]], None] = lambda _c, _u: None

    # -- what ChannelDesk calls ------------------------------------------------------------
    async def load(self, channel: str) -> tuple[dict[Key, Published], int, int]:
        published = dict(self.state[channel])
        newest = max((p.version for p in published.values()), default=0)
        return published, max(newest, self._top(channel)), self._top(channel)

    async def write(self, batches: Iterable[tuple[str, int, list[ChannelUpdate]]]) -> None:
        sent = [(channel, list(updates)) for channel, _, updates in batches if updates]
        if not sent:
            return
        if self.token is None:
            self.token = self.redis_fence
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(_Write(sent, self.token, self.epoch, done))
        await done

    publishers_name_keys = False  # no publisher here: the desk starts no look for keys they name

    async def fence(self) -> None:
        await self.log.round_trip()
        await self.log.writable()
        if self.log.faults is not None and self.log.faults.random() < 0.3:
            self.arrive_late()  # a write on its way got there just before the fence did
        settle = self.log.settle  # ``--settle-faults``: lost or in doubt (``settlefaults.py``)
        outcome = "ok" if settle is None else settle.fence(late=False)
        if outcome == "lost":
            raise timed_out(outcome)
        self.redis_fence = max(self.redis_fence, self.token or 0) + 1  # FENCE_SCRIPT: above the token too
        if outcome == "doubt":
            raise timed_out(outcome)  # raised in Redis; the answer, and so the new token, lost
        self.token = self.redis_fence

    async def last_version(self, channel: str) -> int:
        await self.log.round_trip()
        if self.log.settle is not None:
            self.log.settle.read(f"the newest version of {channel}")
        return self._top(channel)

    # -- what the driver calls -------------------------------------------------------------
    def pump(self, outcome: str, late_first: bool = True) -> None:
        if late_first:
            self.arrive_late()
        sent = [w for w in self.pending if not w.done.done()]  # the desk died before sending: never sent
        self.pending = []
        for w in sent:
            if outcome != "ok":
                self.log.tally.channel_faults += 1
            if outcome == "late":
                self.late.append(w)
            refusal = self._land(w) if outcome in ("ok", "doubt") else None
            if outcome != "ok":
                w.done.set_exception(RedisError(f"sim: channel write {outcome}"))
            elif refusal == "LOST":
                w.done.set_exception(StreamLost(f"{refusal} sim"))
            elif refusal == "OOM":
                w.done.set_exception(oom())  # a plain ResponseError, as ``ChannelStore.write`` raises it
            elif refusal is not None:
                w.done.set_exception(WriteRefused(f"{refusal} sim"))
            else:
                w.done.set_result(None)

    def arrive_late(self, count: int | None = None) -> None:
        count = len(self.late) if count is None else count
        arriving, self.late = self.late[:count], self.late[count:]
        for w in arriving:
            self.log.tally.channel_late_landed += self._land(w) is None

    def crash(self, rng: random.Random) -> None:
        """The desk dies with its process: what it sent lands now, later (refused then) or never."""
        sent = self.late + [w for w in self.pending if not w.done.done()]
        self.pending, self.late = [], []
        for w in sent:
            fate = rng.random()
            if fate < 0.4:
                self._land(w)
            elif fate < 0.7:
                self.late.append(w)
        self.token = None

    def _top(self, channel: str) -> int:
        stream = self.streams[channel]
        return stream[-1].version if stream else 0

    def _land(self, w: _Write) -> str | None:
        if w.epoch != self.log.redis_epoch:
            return "FENCED"
        if self.redis_fence > w.token:
            return "STALE"
        for channel, updates in w.batches:
            if self._top(channel) >= updates[0].version:
                return "TAKEN"
            top, first = self._top(channel), updates[0]
            linked = isinstance(first, StartMarker) and first.settled and top < (first.follows or 0)
            if self.streams[channel] and (top + 1 < first.version if first.follows is None else linked):
                return "LOST"  # following on from, or a settle's marker linked to, a version Redis lost (StreamLost)
            if isinstance(first, StartMarker) and not first.settled and top < first.reached:
                return "LOST"  # a start's marker on a stream below the id the start read there
            if not self.streams[channel] and not self.state[channel] and first.follows is None and first.version > 1:
                return "LOST"  # following on where Redis holds nothing of the channel (back from before its first)
        if refuses(self.log.full):
            return "OOM"  # Redis at its maxmemory (``full.py``): nothing written
        for channel, updates in w.batches:
            self.on_landed(channel, values_of(updates))  # raises if a value was never durable (C4)
            self.streams[channel] += updates  # a start's marker too: it takes its version (C3)
            for u in values_of(updates):  # not a marker: it is no key's value, in no state hash
                self.state[channel][u.key] = Published(u.quantity, u.version, u.event_time, u.status)
        return None


class DeskRunner:
    """The real desk, its rounds run as tasks when the driver says (see the module's docstring)."""

    def __init__(self, desk: ChannelDesk, lost: Callable[[], bool] = lambda: False) -> None:
        """``lost``: told a ``StreamLost``, which the desk's loop answers by reading every channel again
        (``ChannelDesk._relink``), the instance serving on; False: no loss allows it."""
        self.desk, self.lost = desk, lost
        self.task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.stopped = False

    async def start(self) -> None:
        await self.desk.start()
        await cancel_and_wait(self.desk._task)  # its loop sleeps on wall time: rounds come from here
        self.desk._task = None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def kick(self) -> None:
        """Start a round unless one is running (the desk writes one batch at a time) or the desk was
        stopped: as in the service, a stopped desk runs no more rounds (a round cancelled mid-write
        leaves its batch in flight, and the restarted service loads what landed)."""
        if not self.busy and not self.stopped:
            self.task = asyncio.get_running_loop().create_task(self.round())

    def idle(self) -> bool:
        """Nothing curated waits to be offered or published, nothing in flight."""
        desk = self.desk
        return not self.busy and not desk._dirty and all(f.pending == 0 and f.in_flight == 0
                                                         for f in desk.feeds.values())

    def next_due(self) -> int | None:
        now = self.desk.clock.now_ms()
        wakes = [w for w in (f.next_wakeup(now) for f in self.desk.feeds.values()) if w is not None]
        return min(wakes) if wakes else None

    async def round(self) -> None:
        """One round of the desk's loop (``ChannelDesk.run_round``); a storage error ends it (the desk
        has settled the write; its loop would back off and go on, here the next round does). A loss
        (``StreamLost``) has the desk read every channel again, as its loop does."""
        self.rounds += 1
        try:
            with contextlib.suppress(*STORAGE_ERRORS):
                await self.desk.run_round()
        except StreamLost as loss:
            if not self.lost():
                raise
            await self.desk._relink(loss)  # as ``ChannelDesk._run``: the shards and the instance serve on

    async def stop(self) -> None:
        self.stopped = True
        await cancel_and_wait(self.task)
        self.task = None
