"""Keys delivered at versions Redis has since lost, found where a start's marker may have been trimmed unread: the
versions this process delivered compared with the channel's state hash (C4).

A start's marker says what Redis lost: what was delivered above the version it follows (``_restamp``). Where the
stream's trimming removed entries before this process read them as the holder (a gap; its own pending entries, or
another name's, trimmed) or looked at them as a standby (``_standby``), the marker may have been among them, and that
version is not known. The state hash tells instead: the desk writes it with every entry and never lowers it, so a key
held there below the version delivered, or not at all, was delivered at a version Redis lost; named as from a marker
(``LostNames``: a ``restamp`` key of another type refuses the names, kept, and delivery goes on). Without a loss
every key is held at the version delivered or above: nothing is named.

One comparison per process, so that one started as the holder goes on as a standby and the other way round. Bounded:
``SWEEP_KEYS`` keys a step (``HMGET`` of ``CHUNK``), a step at each of the holder's reads or the standby's looks.
Started again while under way (entries trimmed unread again: a loss since may be behind what it compared) it goes
on from where it is, over every key once more: a holder behind the trimming, finding a gap at each read, still
compares every key, and never more than once per gap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from atp_service.storage.channel_wire import state_entry
from atp_service.storage.durability import STORAGE_ERRORS

from ._config import PublisherConfig
from ._metrics import PublisherMetrics
from ._restamp import CHUNK, LostNames

log = logging.getLogger(__name__)
SWEEP_KEYS = 10 * CHUNK
"""Keys compared with the state hash at most in one step."""
WARN_EVERY_S = 60.0
"""A step that keeps failing is warned of at most this often."""


class Comparison:
    """The versions delivered per key now (``delivered``) compared with the state hash, a step at a time."""

    def __init__(self, config: PublisherConfig, client: Any, names: LostNames, metrics: PublisherMetrics,
                 delivered: Callable[[], Mapping[str, int]]) -> None:
        self.config, self.client, self._names, self.metrics, self.delivered = config, client, names, metrics, delivered
        self._keys: list[str] = []
        self._next = 0
        """Index in ``_keys`` of the next key to compare."""
        self._left = 0
        """Keys left to compare (0: no comparison under way)."""
        self._warn_after = 0.0
        """When (monotonic) a failed step may be warned of again."""

    @property
    def under_way(self) -> bool:
        return self._left > 0

    def start(self, role: str, why: str) -> None:
        """Every key delivered so far to compare (again: from where one under way is). ``role``: holder or standby;
        ``why``: the entries found trimmed unread, logged."""
        keys = list(self.delivered())
        if not keys:  # nothing delivered (a new group, a process that never held the lease): nothing to name
            return
        cfg = self.config
        # Started again while under way (a holder behind the trimming: a gap at each read): said once, not per read.
        log.log(logging.DEBUG if self.under_way else logging.INFO,
                "%s: %s, and a start's marker may have been among them; comparing the versions this %s delivered of "
                "%d keys with the channel's state hash instead", cfg.channel, why, role, len(keys),
                extra={"event": "publisher_restamp_compare", "channel": cfg.channel, "role": role, "keys": len(keys)})
        self._next = self._next % len(keys) if self._keys else 0
        self._keys, self._left = keys, len(keys)

    async def step(self) -> None:
        """``SWEEP_KEYS`` keys of a comparison under way: each held in the state hash below the version delivered (or
        not at all) named. The naming never holds delivery up (it is an aid to convergence, C4): a Redis error (Redis
        away, the state hash of another type, a restamp value the naming script refuses) is warned of, at most once a
        minute, and the step done again at the next read or look."""
        try:
            await self._step()
        except STORAGE_ERRORS as exc:
            now = time.monotonic()
            if now >= self._warn_after:
                self._warn_after = now + WARN_EVERY_S
                log.warning("%s: comparing the versions delivered with the channel's state hash failed (%s): tried "
                            "again at the next read; delivery goes on", self.config.channel, exc,
                            extra={"event": "publisher_restamp_compare_failed", "channel": self.config.channel})

    async def _step(self) -> None:
        if not self._left:
            return
        cfg, delivered, keys = self.config, self.delivered(), self._keys
        n = min(SWEEP_KEYS, self._left)
        end = self._next + n
        batch = keys[self._next:end] + keys[:max(0, end - len(keys))]
        found: dict[str, int] = {}
        for start in range(0, n, CHUNK):
            part = batch[start:start + CHUNK]
            values = await self.client.hmget(cfg.state_key, part)
            for key, value in zip(part, values, strict=True):
                if (version := delivered.get(key, 0)) and (value is None or held_below(key, value, version)):
                    found[key] = version
        if found:
            await self._names.owe(found)  # kept by it from here, also where Redis fails to take them now
        self.metrics.restamp_compared.labels(cfg.channel).inc(n)
        self._next, self._left = end % len(keys), self._left - n
        if not self._left:
            self._keys, self._next = [], 0


def held_below(key: str, value: Any, version: int) -> bool:
    """The state hash's ``value`` of ``key`` is at a version below ``version`` (one of another format: not known)."""
    try:
        return state_entry(key, value)[1].version < version
    except ValueError:
        return False
