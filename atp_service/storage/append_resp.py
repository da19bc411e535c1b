"""The RESP of the log's append calls, put together from parts made once per shard.

A group commit is one ``EVALSHA`` of the append script: its digest, then four keys per entry
(owner, log, fence, log-begun), then five arguments per entry (epoch, seq, data, fence token, group). hiredis
packs such a command in C, but formats every argument's length with ``sprintf`` after converting it
from Python: ~22,000 machine instructions for a one-entry commit, 7 % of a unary Reserve's work in
this process. Here only what changes from entry to entry is formatted: the seq and the data. A
shard's keys never change, and its epoch and fence token seldom do, so their RESP is made once and
kept (one set of parts per shard: bounded by the shard count) until the entry carries others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from atp_service.storage.records import Pending

__all__ = ["AppendPacker", "bulk"]

_GROUP_NONE = b"$1\r\n0\r\n"
"""The group argument of an entry that is not part of a cross-shard group (nearly all of them)."""


def bulk(value: bytes | str | int) -> bytes:
    """One RESP bulk string: ``value`` as bytes, str (UTF-8) or a decimal integer."""
    raw = value if isinstance(value, bytes) else (b"%d" % value if isinstance(value, int) else value.encode())
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


class _ShardParts:
    """What a shard's entries share: its keys, and the RESP of its epoch and fence token as last
    seen; ``solo`` is the whole start of a one-entry call, up to the seq (nearly every call at
    moderate rates)."""

    __slots__ = ("epoch", "epoch_resp", "key_list", "keys", "keys_resp", "solo", "tail", "token", "token_resp")

    def __init__(self, keys: tuple[str, str, str, str]) -> None:
        self.keys = keys
        self.key_list = list(keys)
        """The keys of a one-entry call (``pack_one``), one list for all of them: a call's keys are
        only read (to route it, on a cluster)."""
        self.keys_resp = b"".join([bulk(key) for key in keys])
        self.epoch: str | None = None  # none yet: the first entry carries its own (``carry``)
        self.token: int | None = None
        self.epoch_resp = self.token_resp = self.tail = self.solo = b""

    def carry(self, head: bytes, epoch: str, token: int) -> None:
        """Entries from now on carry ``epoch`` and ``token`` (an entry's own, when they changed)."""
        self.epoch, self.epoch_resp = epoch, bulk(epoch)
        self.token, self.token_resp = token, bulk(token)
        self.solo = head + self.keys_resp + self.epoch_resp
        self.tail = self.token_resp + _GROUP_NONE


class AppendPacker:
    """Packs one append call (``pack``) for the script whose digest is ``sha``; ``keys_of`` names a
    shard's keys (owner, log, fence), asked once per shard."""

    __slots__ = ("_keys_of", "_parts", "_sha", "_solo_head")

    def __init__(self, sha: str, keys_of: Callable[[int], tuple[str, str, str, str]]) -> None:
        self._sha = sha.encode()
        self._keys_of = keys_of
        self._parts: dict[int, _ShardParts] = {}
        self._solo_head = self._head(1)

    def pack(self, unit: Sequence[Pending]) -> tuple[list[str], bytes]:
        """The keys of ``unit``'s entries, in order, and the whole ``EVALSHA`` command in RESP: the
        same bytes as packing ``("EVALSHA", sha, 4n, *keys, *(epoch, seq, data, token, group) per
        entry)``."""
        if len(unit) == 1 and not unit[0].group:
            return self.pack_one(unit[0])
        keys: list[str] = []
        keys_resp: list[bytes] = []
        args: list[bytes] = []
        for p in unit:
            parts = self._of(p)
            keys += parts.keys
            keys_resp.append(parts.keys_resp)
            args.append(parts.epoch_resp)
            args.append(_seq_and_data(p))
            args.append(parts.token_resp + bulk(p.group) if p.group else parts.tail)
        return keys, b"".join([self._head(len(unit)), *keys_resp, *args])

    def pack_one(self, p: Pending) -> tuple[list[str], bytes]:
        """``pack`` of one entry alone: the shard's ``solo`` start, then the seq and the data, then
        the token and group, in one format (``_of`` and ``_seq_and_data`` written out where the
        shard's parts carry the entry's epoch and token, as nearly always). The keys are the shard's
        ``key_list``: read them, never change them."""
        parts = self._parts.get(p.shard)
        if parts is None or parts.epoch != p.epoch or parts.token != p.token or p.group:
            if p.group:
                return self.pack([p])
            parts = self._of(p)
        seq, data = b"%d" % p.seq, p.data
        return parts.key_list, b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (parts.solo, len(seq), seq, len(data), data,
                                                                   parts.tail)

    def _of(self, p: Pending) -> _ShardParts:
        """The parts of ``p``'s shard, carrying ``p``'s epoch and token."""
        parts = self._parts.get(p.shard)
        if parts is None:
            parts = self._parts[p.shard] = _ShardParts(self._keys_of(p.shard))
        if parts.epoch != p.epoch or parts.token != p.token:
            parts.carry(self._solo_head, p.epoch, p.token)
        return parts

    def _head(self, entries: int) -> bytes:
        """The start of a call of ``entries`` entries, up to its first key."""
        numkeys = b"%d" % (4 * entries)
        return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            3 + 9 * entries, len(self._sha), self._sha, len(numkeys), numkeys)


def _seq_and_data(p: Pending) -> bytes:
    """The seq and data arguments of ``p``."""
    seq = b"%d" % p.seq
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(seq), seq, len(p.data), p.data)
