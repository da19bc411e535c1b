"""The names of the service's Redis keys: one place that knows the keyspace's layout.

Every key a script touches together shares one hash tag, so each script call touches one Redis
Cluster slot (a cluster refuses a script across slots with CROSSSLOT). A shard is a *group* of the
keyspace: its log, snapshot, fence and owner key are ``<prefix>{g<shard>}:log|snap|fence|owner`` (a large
snapshot also ``snap:<n>`` and ``snap-pieces``).
The channel feeds are one more group, ``<prefix>{avail}:…``: the desk writes every channel in one
script call. On a single Redis the layout is the same (a single Redis is a cluster of one).
"""

from __future__ import annotations

from typing import Final

from atp_service.config_values import check_key_prefix

CHANNELS: Final = -1
"""The group of the channel feeds: its keys share one tag, and it is claimed and fenced like a
shard's group."""

LAYOUT: Final = 2
"""The keyspace layout this version writes, recorded in the ``meta`` hash: a keyspace written in
another layout is refused at start rather than misread (1: the keys before hash tags)."""

CHANNEL_KEY_SUFFIXES: Final = ("state", "restamp")
"""What follows ``<channel>:`` in the service's other keys of a channel (``channel_state``, ``channel_restamp``)."""
PUBLISHER_KEY_WORDS: Final = ("dlq", "redeliver", "redeliver-all", "lease", "delivered")
"""What follows ``<channel>:`` in a channel publisher's keys, each then ``:<group>`` (``Keyspace.publisher_key``)."""


def shares_keys(channel: str, other: str) -> bool:
    """Whether a key of channel ``other`` (its stream, or one named after it) is also one of ``channel``'s: ``other``
    is ``channel`` followed by ``:`` and a word of ``CHANNEL_KEY_SUFFIXES`` (the whole rest), or of
    ``PUBLISHER_KEY_WORDS`` (then anything: a publisher's group, or ``other``'s own keys named after it)."""
    if not other.startswith(channel + ":"):
        return False
    rest = other[len(channel) + 1:]
    return rest in CHANNEL_KEY_SUFFIXES or rest.partition(":")[0] in PUBLISHER_KEY_WORDS


class Keyspace:
    """The keys of one service keyspace (``key_prefix``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        check_key_prefix(prefix)
        self.prefix = prefix

    def tag(self, group: int) -> str:
        """``<prefix>{g<group>}:`` (``{avail}`` for ``CHANNELS``): the start of every key of the group."""
        return f"{self.prefix}{{avail}}:" if group == CHANNELS else f"{self.prefix}{{g{group}}}:"

    def log(self, shard: int) -> str:
        """The shard's log: a stream with service-chosen ids ``<seq>-0``."""
        return self.tag(shard) + "log"

    def log_begun(self, shard: int) -> str:
        """Set by the append that writes the log's first entry (or, on a log begun without it by an earlier build,
        the first a call lands), in the same script, and never removed: a log found missing where it is set lost
        entries the service acknowledged (R7), though no snapshot says so."""
        return self.tag(shard) + "log-begun"

    def snap(self, shard: int, piece: int = 0) -> str:
        """The shard's latest snapshot (its first key, ``piece`` 0; the others ``snap:<piece>``, as many as
        ``snap_pieces`` says); the log is trimmed up to it."""
        return self.tag(shard) + ("snap" if piece == 0 else f"snap:{piece}")

    def snap_pieces(self, shard: int) -> str:
        """How many keys the shard's snapshot is in (absent: one, ``snap``): a snapshot past
        ``snapshot_piece_bytes`` is spread over several, each below Redis's largest string."""
        return self.tag(shard) + "snap-pieces"

    def snap_parts(self, shard: int, piece: int = 0) -> str:
        """A snapshot being written in parts (``snapshot_parts.py``): its ``piece``, moved to ``snap`` when whole."""
        return self.tag(shard) + ("snap-parts" if piece == 0 else f"snap-parts:{piece}")

    def snap_parts_try(self, shard: int) -> str:
        """The try whose parts ``snap_parts`` holds, and its piece being written: a part of another is refused."""
        return self.tag(shard) + "snap-parts-try"

    def fence(self, group: int) -> str:
        """The group's fence: a write carrying an older token is refused (R7, C4)."""
        return self.tag(group) + "fence"

    def owner(self, group: int) -> str:
        """The epoch of the instance that owns the group; a write of any other is refused whole."""
        return self.tag(group) + "owner"

    def channel_stream(self, channel: str) -> str:
        """One entry per published value, id ``<version>-0``: what publishers read."""
        return f"{self.tag(CHANNELS)}{channel}"

    def channel_state(self, channel: str) -> str:
        """The last published value of every (SKU, location) of the channel."""
        return f"{self.tag(CHANNELS)}{channel}:state"

    def channel_restamp(self, channel: str) -> str:
        """Keys a publisher delivered at versions Redis then lost: ``sku<TAB>location`` -> the newest such version.
        The desk publishes each again at a version of its run (``channels/restamp.py``, C3, C4)."""
        return f"{self.tag(CHANNELS)}{channel}:restamp"

    def publisher_key(self, channel: str, word: str, group: str) -> str:
        """A key of ``channel``'s publishers of consumer group ``group`` (``word``: one of ``PUBLISHER_KEY_WORDS``)."""
        if word not in PUBLISHER_KEY_WORDS:
            raise ValueError(f"not a publisher key's word: {word!r}")
        return f"{self.channel_stream(channel)}:{word}:{group}"

    def reservation_id(self, reservation_id: str) -> str:
        """The claim of a reservation id (``ownership = leases``, ``ids.py``): its home group. Tagged by the
        id, so the claims spread over a cluster's slots (an id with a brace still has one slot, its own)."""
        return f"{self.prefix}rid:{{{reservation_id}}}"

    @property
    def claimants(self) -> str:
        """The tokens of the recent claims on one Redis, scored by the epoch each took (``CLAIM_SCRIPT``)."""
        return f"{self.prefix}claimants"

    @property
    def claims(self) -> str:
        """The last epoch drawn by a claim on a Redis Cluster, or a leased group's taking (``EPOCH_SCRIPT``)."""
        return f"{self.prefix}claims"

    @property
    def members(self) -> str:
        """The service processes sharing the keyspace (``ownership = leases``), each timing out unless renewed."""
        return f"{self.prefix}members"

    @property
    def meta(self) -> str:
        """The keyspace's layout and shard count, checked at start."""
        return f"{self.prefix}meta"

    def legacy_keys(self) -> list[str]:
        """Keys only the layout before hash tags wrote: their presence means an older keyspace."""
        return [f"{self.prefix}epoch", f"{self.prefix}log:0", f"{self.prefix}avail-fence"]
