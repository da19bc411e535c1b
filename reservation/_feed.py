"""C2/C3: one channel's feed of curated numbers — coalesced, throttled, rate-limited, prioritised.

Pure logic with the time passed in (milliseconds): the service offers every curated value it
computes; ``take`` says what to publish now. Order of precedence in ``take``:

1. stock-outs (a drop to 0) — at once, inside any throttle interval (C2); they take tokens from the rate limit
   but never wait for one (the bucket may go into debt, which delays later ordinary changes: the average holds),
   a debt of at most ``max_wait_ms`` worth of tokens (a burst, if more: ``TokenBucket.most_owed``);
2. first values of keys never published before (a baseline) — at once, outside the rate limit: a subscriber
   needs the whole picture before changes mean anything;
3. ordinary changes whose throttle interval has passed, within the token bucket: first those that have waited past
   it longer than ``max_wait_ms`` (oldest first: a slow seller is not starved by fast sellers' changes on a channel
   behind its rate limit), then low-stock changes, then by recent sales velocity of the SKU (highest first).

A key has at most one pending value (the newest wins) and at most one value in flight. The
queues of ordinary changes (throttle interval; rate limit, held twice: by precedence and by age, so the oldest
is at a head, not found by a scan) are heaps whose superseded entries are skipped when they reach the head; they are
also swept out whenever they outnumber the live ones (``HEAP_SLACK``), so a heap holds at most about twice the
pending values. Versions come from one counter per channel with no gaps, so they only increase per key (C3) and a
reader can tell a missed update from a version it did not see.
"""

from __future__ import annotations

import heapq
from itertools import islice
from typing import Any, TypeVar

import msgspec

from ._bucket import TokenBucket
from ._feed_policy import FeedPolicy, StockStatus

Key = tuple[str, str]
"""(sku, location); the location is "" for a network offer (one number per SKU)."""
HEAP_SLACK = 1024
"""Superseded entries a queue may hold beyond its live ones before it is swept. Behind a key that waits at the head
(the rate limit), a value offered and then withdrawn (E11: back to what was published) or turned into a stock-out left
its entry until it reached the head: one per change, for as long as the channel was behind - all day on a busy one."""
_E = TypeVar("_E", tuple[int, int, Key], tuple[int, float, int, int, Key])
"""An entry of the due heap (due_at, gen, key) or of the ready heap (class, -velocity, due_at, gen, key)."""


class Published(msgspec.Struct, array_like=True, gc=False):
    """The last value of a key the channel was sent (what ``previous`` of the next update is), with the status it
    was published with: the stream's entry at ``version`` carries that one (C3), whatever ``low_stock_level`` a
    reload set since - a snapshot that classed the quantity anew showed at that version what no entry holds."""

    quantity: int
    version: int
    event_time: int
    status: StockStatus


class ChannelUpdate(msgspec.Struct, gc=False):
    """One published value (C3) with its status and the value it replaces."""
    channel: str
    sku: str
    location: str
    quantity: int
    previous: int | None
    status: StockStatus
    version: int
    event_time: int
    """Newest source time behind the value (fact event_time, or the command's service time)."""
    durable_at: int
    """When the change behind it was durable (the oldest one coalesced; a stock-out's own)."""
    published_at: int = 0
    follows: int | None = None  # a run's first value: the version it follows, across the start's jump (C3)

    @property
    def key(self) -> Key:
        return (self.sku, self.location)


class _Pending:
    __slots__ = ("durable_at", "event_time", "gen", "quantity", "ready", "velocity")

    def __init__(self, quantity: int, event_time: int, durable_at: int, velocity: float) -> None:
        self.quantity, self.event_time, self.durable_at = quantity, event_time, durable_at
        self.velocity, self.gen = velocity, 0
        self.ready: tuple[int, float, int] | None = None
        """(class, -velocity, due_at) of its live ready-heap entry; None: not in the ready heap."""


class Feed:
    """The publishing state of one channel."""

    def __init__(self, channel: str, policy: FeedPolicy, now_ms: int,
                 published: dict[Key, Published] | None = None, version: int | None = None) -> None:
        """``version``: the newest the channel ever had, at least that of every ``published`` value
        (``ChannelStore.load`` keeps it while reading); None: the newest of ``published``, found by
        a pass over every value - seconds of a held event loop at tens of millions of keys."""
        self.channel = channel
        self.policy = policy
        self.published: dict[Key, Published] = published if published is not None else {}
        if version is None:
            version = max((p.version for p in self.published.values()), default=0)
        self.version = version
        self.published_version = self.version
        """Newest version confirmed written: a snapshot of ``published`` is current as of it."""
        self.bucket = TokenBucket(policy.rate_per_s, policy.burst, now_ms)
        self.coalesced = 0
        """Offers that replaced a pending value (the newest wins)."""
        self.throttled = 0
        """Offers that had to wait for their key's throttle interval."""
        self.overdue = 0
        """Changes taken after waiting past their throttle interval longer than ``max_wait_ms``."""
        self._pending: dict[Key, _Pending] = {}
        self._stockouts: dict[Key, None] = {}  # ordered sets
        self._baseline: dict[Key, None] = {}
        self._due: list[tuple[int, int, Key]] = []  # (due_at, gen, key): inside its throttle interval
        self._ready: list[tuple[int, float, int, int, Key]] = []  # (class, -velocity, due_at, gen, key)
        self._aged: list[tuple[int, int, Key]] = []  # (due_at, gen, key): the same changes, oldest first
        self._inflight: dict[Key, ChannelUpdate] = {}
        self._again: dict[Key, None] = {}
        """Keys offered again (``offer_again``) until that value is confirmed: judged as never sent, yet published."""
        self._withdrawn: dict[Key, None] = {}
        """Keys whose pending value is a withdrawal's 0 (``withdraw``), not a curated one."""
        self._next_allowed: dict[Key, int] = {}
        self._gen = self.held_until = 0  # held_until: when a key read back from Redis may change (C2)

    def set_policy(self, policy: FeedPolicy, now_ms: int) -> None:
        """A reloaded configuration: pending values, versions, what was published and the tokens spent stay (C2)."""
        if policy != self.policy:
            self.policy, self.bucket = policy, self.bucket.renewed(policy.rate_per_s, policy.burst, now_ms)

    # -- what is known -----------------------------------------------------------
    def last_sent(self, key: Key) -> int | None:
        sent = self._inflight.get(key)
        if sent is not None:
            return sent.quantity
        pub = None if key in self._again else self.published.get(key)
        return None if pub is None else pub.quantity

    def _status_sent(self, key: Key) -> StockStatus | None:
        """The status ``last_sent``'s quantity was sent with (None: nothing sent)."""
        sent = self._inflight.get(key)
        if sent is not None:
            return sent.status
        pub = None if key in self._again else self.published.get(key)
        return None if pub is None else pub.status

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def stockouts_pending(self) -> int:
        """Stock-outs waiting to be taken: the desk writes them between slices of a round's curation (C2)."""
        return len(self._stockouts)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def waiting(self, key: Key) -> bool:
        """A value of ``key`` is pending or being written: it goes out at a new version (or E11 withdraws it)."""
        return key in self._pending or key in self._inflight

    # -- offers --------------------------------------------------------------
    def offer(self, key: Key, quantity: int, event_time: int, durable_at: int, now_ms: int,
              velocity: float = 0.0) -> None:
        """The newest curated value of a key; equal to what was last sent, in the status sent: nothing to publish
        (E11). The same number that a reloaded ``low_stock_level`` classes otherwise goes out, as a change: the
        status shown reaches the channel's publishers, at a new version (C3: a version names one value, its status
        with it). ``velocity``: the SKU's demand, higher first, comparable across offers made at different times
        (``marks.velocity_rank``)."""
        assert quantity >= 0, "C1: a channel is never offered a negative number"
        self._withdrawn.pop(key, None)  # a curated value now, whatever was withdrawn before
        last = self.last_sent(key)
        old = self._pending.get(key)
        if last == quantity and self._status_sent(key) is self.policy.status(quantity):
            if old is not None:
                self._forget(key)
            return
        stockout = quantity == 0 and last is not None and last > 0
        if old is not None:
            self.coalesced += 1
            old.quantity, old.event_time = quantity, max(old.event_time, event_time)
            old.velocity = velocity
            if stockout == (key in self._stockouts):
                if old.ready is not None:  # the rate limit's order reads its class and velocity now
                    self._re_place(key, old)
                return  # already queued in the right class; the newest value rides along
            if stockout:
                old.durable_at = durable_at  # a stock-out's delay counts from its own change
            self._forget(key)
        pend = old or _Pending(quantity, event_time, durable_at, velocity)
        self._gen += 1
        pend.gen, pend.ready = self._gen, None
        self._pending[key] = pend
        if last is None:
            self._baseline[key] = None
        elif stockout:
            self._stockouts[key] = None
        else:
            due = max(now_ms, self._next_allowed.get(key, self.held_until))
            self.throttled += due > now_ms
            self._due = self._push(self._due, (due, pend.gen, key), 1)

    def offer_again(self, key: Key, quantity: int, event_time: int, durable_at: int, now_ms: int) -> None:
        """``key`` offered as a baseline (at once, ``previous`` unknown) though it was published: the destination may
        show a value the channel does not know of (one Redis lost), so it is sent at a new version even if equal (not
        E11). Its published value stays what a snapshot shows until the new one is confirmed (C4: durable only)."""
        assert not self.waiting(key), "a value of it pending or being written goes out at a new version already"
        self._again[key] = None
        self.offer(key, quantity, event_time, durable_at, now_ms)

    def withdraw(self, key: Key, now_ms: int) -> None:
        """``key`` is no longer the channel's (a location it stopped selling from): shown 0 once it
        was shown anything, or is being shown something now (C1); a value never shown is dropped."""
        pend, sent, pub = self._pending.get(key), self._inflight.get(key), self.published.get(key)
        if sent is None and pub is None:
            self._forget(key)
            return
        event_time = max(known.event_time for known in (pend, sent, pub) if known is not None)
        self.offer(key, 0, event_time, now_ms, now_ms)
        if key in self._pending:
            self._withdrawn[key] = None

    def known_keys(self) -> list[Key]:
        """Every key published, being written or waiting, once each: a copy of ``published``'s keys
        and the few others (no set of millions of keys built)."""
        published = self.published
        return [*published, *(key for key in {**self._inflight, **self._pending} if key not in published)]

    def _forget(self, key: Key) -> None:
        self._pending.pop(key, None)
        self._stockouts.pop(key, None)
        self._baseline.pop(key, None)
        self._withdrawn.pop(key, None)

    # -- taking what to publish --------------------------------------------------
    def take(self, now_ms: int, limit: int, urgent_only: bool = False) -> list[ChannelUpdate]:
        """Updates to publish now, at most ``limit``, in precedence order; each gets its version.
        They are in flight until ``confirm`` (written) or ``give_back`` (the write failed).
        ``urgent_only``: stock-outs and baselines, nothing that waits for the throttle or the bucket."""
        assert not self._inflight, "one write at a time: confirm or give back the last take first"
        self.bucket.refill(now_ms)
        out: list[ChannelUpdate] = []
        # The first ``limit`` keys only, not a copy of every key queued: a new per-location channel
        # queues millions of baselines, and a copy per take held the event loop ~80 ms each, for
        # thousands of takes (``_emit`` removes each key, so the keys are taken first).
        owed = self.bucket.most_owed(self.policy.max_wait_ms)  # C2: behind stock-outs no longer than behind sellers
        for key in list(islice(self._stockouts, limit)):
            self.bucket.force(owed)
            out.append(self._emit(key, now_ms))
        for key in list(islice(self._baseline, limit - len(out))):
            out.append(self._emit(key, now_ms))
        if urgent_only:
            return out
        self._promote(now_ms)
        overdue_before = now_ms - self.policy.max_wait_ms
        while len(out) < limit:
            oldest = self._live_head(self._aged, 1)
            if oldest is not None and oldest[0] <= overdue_before:
                heap: list[Any] = self._aged  # waited past the bound: before the velocity order
            else:
                heap = self._ready
                if self._live_head(heap, 3) is None:
                    break
            if not self.bucket.try_take():
                break
            key = heapq.heappop(heap)[-1]  # its entry in the other heap is skipped as superseded
            self.overdue += heap is self._aged
            out.append(self._emit(key, now_ms))
        return out

    def _live_head(self, heap: list[_E], gen_at: int) -> _E | None:
        """The head of ``heap`` once superseded or withdrawn entries are popped from it (None: empty)."""
        pending = self._pending
        while heap:
            head = heap[0]
            pend = pending.get(head[-1])
            if pend is not None and pend.gen == head[gen_at]:
                return head
            heapq.heappop(heap)
        return None

    def oldest_wait_ms(self, now_ms: int) -> int:
        """How long the oldest change whose throttle interval is over has waited since (0: none)."""
        self._promote(now_ms)
        oldest = self._live_head(self._aged, 1)
        return 0 if oldest is None else max(0, now_ms - oldest[0])

    def _promote(self, now_ms: int) -> None:
        """Move changes whose throttle interval is over from the due heap to the ready heap. A change
        offered while its key's last value was being written was given the interval of the value
        before: it waits for the interval of the one written since (C2, once per interval)."""
        due, allowed = self._due, self._next_allowed
        while due and due[0][0] <= now_ms:
            due_at, gen, key = heapq.heappop(due)
            pend = self._pending.get(key)
            if pend is None or pend.gen != gen:
                continue
            if allowed.get(key, 0) > now_ms:
                heapq.heappush(due, (allowed[key], gen, key))
                continue
            self._enter_ready(key, pend, due_at)

    def _rank(self, key: Key, pend: _Pending) -> tuple[int, float]:
        """Where a ready change stands in the rate limit's order: low stock (its value or the one
        shown) first, then by velocity, highest first (C2)."""
        policy, last = self.policy, self.last_sent(key)
        low = policy.status(pend.quantity) is StockStatus.LOW_STOCK or (
            last is not None and policy.status(last) is StockStatus.LOW_STOCK)
        return 0 if low else 1, -pend.velocity

    def _enter_ready(self, key: Key, pend: _Pending, due_at: int) -> None:
        """``pend`` into the ready heap at its current rank and into the ageing heap at ``due_at``,
        both under its gen: a live ageing entry always has a live ready twin."""
        low, speed = self._rank(key, pend)
        pend.ready = (low, speed, due_at)
        self._ready = self._push(self._ready, (low, speed, due_at, pend.gen, key), 3)
        self._aged = self._push(self._aged, (due_at, pend.gen, key), 1)

    def _re_place(self, key: Key, pend: _Pending) -> None:
        """A ready change replaced by a newer value whose class or velocity differs: its entries are
        pushed again under a new gen (the old ones skipped as superseded), keeping the time its
        throttle interval ended, so the ageing bound still counts from it. Left in place, a seller
        kept the velocity it had when it became ready and lost to an equal seller just published."""
        assert pend.ready is not None
        low, speed, due_at = pend.ready
        if (low, speed) != self._rank(key, pend):
            self._gen += 1
            pend.gen = self._gen
            self._enter_ready(key, pend, due_at)

    def _push(self, heap: list[_E], entry: _E, gen_at: int) -> list[_E]:
        """``entry`` pushed onto ``heap`` (whose entries hold their gen at ``gen_at``); the heap swept
        of superseded entries first when they outnumber the live ones past ``HEAP_SLACK``. Returns
        the heap (a new list when swept)."""
        if len(heap) > 2 * len(self._pending) + HEAP_SLACK:
            pending = self._pending
            heap = [e for e in heap if (p := pending.get(e[-1])) is not None and p.gen == e[gen_at]]
            heapq.heapify(heap)
        heapq.heappush(heap, entry)
        return heap

    def _emit(self, key: Key, now_ms: int) -> ChannelUpdate:
        pend, pub = self._pending[key], self.published.get(key)
        self._forget(key)
        self.version += 1
        update = ChannelUpdate(  # C3: the facts behind the value published are behind this one (a late one's, E6)
            self.channel, key[0], key[1], pend.quantity, self.last_sent(key), self.policy.status(pend.quantity),
            self.version, pend.event_time if pub is None else max(pend.event_time, pub.event_time), pend.durable_at,
            now_ms,
        )
        self._inflight[key] = update
        return update

    # -- after the write -----------------------------------------------------------
    def confirm(self, updates: list[ChannelUpdate]) -> None:
        """The updates are durable in the channel stream: they are the published values now."""
        throttle = self.policy.throttle_ms
        for u in updates:
            key = u.key
            del self._inflight[key]
            self.published[key] = Published(u.quantity, u.version, u.event_time, u.status)
            self._again.pop(key, None)
            self.published_version = max(self.published_version, u.version)
            self._next_allowed[key] = u.published_at + throttle
            pend = self._pending.get(key)
            if pend is not None and pend.quantity == u.quantity and u.status is self.policy.status(u.quantity):
                self._forget(key)  # E11: what is pending was just published (a reload's status: not yet)

    def give_back(self, updates: list[ChannelUpdate], now_ms: int) -> None:
        """The write did not land: each value, or one offered meanwhile, offered again against what is shown (E11: no
        5 over 5 after a 0 lost), and their versions used again: contiguous (a gap means a missed entry, C3). A key
        withdrawn meanwhile that was never shown is dropped (C1: ``withdraw``'s 0 is no new position's baseline)."""
        self.version = min((u.version for u in updates), default=self.version + 1) - 1
        for u in updates:
            del self._inflight[u.key]
            pend = self._pending.get(u.key)  # judged against ``u``, the value being written: judged anew
            withdrawn = u.key in self._withdrawn
            self._forget(u.key)
            if withdrawn and u.key not in self.published:
                continue  # C1: withdrawn while its first value was lost on its way: never shown, so dropped, no 0
            v = u if pend is None else pend
            self.offer(u.key, v.quantity, v.event_time, v.durable_at, now_ms, 0.0 if pend is None else pend.velocity)

    def next_wakeup(self, now_ms: int) -> int | None:
        """When ``take`` may next have something (None: nothing pending)."""
        if self._stockouts or self._baseline:
            return now_ms
        times = []  # from live heads only: a superseded one woke the desk for nothing (a write taking nothing)
        if self._live_head(self._ready, 3) is not None:
            times.append(now_ms + self.bucket.ms_until_token())
        due = self._live_head(self._due, 1)
        if due is not None:
            times.append(due[0])
        return min(times) if times else None
