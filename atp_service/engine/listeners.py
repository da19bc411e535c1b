"""Who hears of a shard's log entries: the channel feeds, the engine's routes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from reservation import LogEntry

log = logging.getLogger(__name__)

Listener = Callable[[int, LogEntry], None]
"""Called with the shard and the entry; must not raise or block."""


class EntryListeners:
    """The listener lists of one shard's entries, and the one way they are told."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.listeners: list[Listener] = []
        """Called with every entry once it is durable (channel feeds)."""
        self.undo_listeners: list[Listener] = []
        """Called with every entry taken back because its append failed (channels re-curate, C4)."""
        self.lost_listeners: list[Listener] = []
        """Called with every entry in doubt found not to have landed when settling (it never will), and with
        every entry whose append was refused before it could land (OOM, a slot not served: never in doubt)."""
        self.landed_late_listeners: list[Listener] = []
        """Called with every entry found in the log when settling, after it had been taken back."""
        self.settled_listeners: list[Callable[[int], None]] = []
        """Called with the shard once a settle has ended its doubt (after the entries' listeners)."""

    def _tell_settled(self) -> None:
        for listener in self.settled_listeners:
            try:
                listener(self.shard)
            except Exception:  # a listener's bug must not break the commit path
                log.exception("shard %d: settled listener failed", self.shard)

    def _tell(self, listeners: list[Listener], entry: LogEntry) -> None:
        for listener in listeners:
            try:
                listener(self.shard, entry)
            except Exception:  # a listener's bug must not break the commit path
                log.exception("shard %d: entry listener failed", self.shard)
