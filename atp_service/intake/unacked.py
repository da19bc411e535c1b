"""Where a consumer group made again must start so that no entry the reader had not acknowledged is lost.

A consumer group deleted (XGROUP DESTROY by an operator, a Redis restored without it) takes its
pending list with it: the entries delivered to the reader and not acknowledged yet — a batch being
applied, a fact whose shard or owner did not answer, left to be read again from the reader's own
pending list — are in no list any more. Made again after the newest entry read, the group never
delivered them again, and nothing was dead-lettered: facts lost with nothing said, where every entry
is to be applied, quarantined (E6) or dead-lettered with its reason. So the reader keeps, per stream,
a bound below every entry it may hold unacknowledged, and the group is made again at the bound where
it is older than the newest entry read: those entries are delivered again, the ones acknowledged
meanwhile among them a duplicate of no effect (E8). Bounded: a few ids per stream, not one per entry
pending. The bound only goes up when a pass over the reader's own pending list read it through: what
it left pending then is all there is. Until the first such pass since the start, the list holds
entries of the run before, known to no one here: the pass's position is a bound too (all are after it).

Those bounds rise on what Redis showed, which Redis back from older data no longer holds: a group made again uses a
bound only while Redis holds the token it was kept under (``bounds.py``), each kept lowered by every entry held since,
as the bounds here are: the last ``BOUNDS_KEPT`` of them.

Only this reader's entries: another process's, or a dead consumer's not claimed yet, are in no memory here — but the
bound kept under a token is below the oldest entry pending in the group, whoever held it, as Redis set the token
(``bounds.py``). The group made again by another process (this reader seeing no NOGROUP) is told by the mark Redis
keeps of it (``again``, from each read and claim: ``again.py``), so that entries it delivers again whose facts were
quarantined are not decided again.

Among the entries delivered again are those refused meanwhile by a judgement of the clock — stamped
past the allowed skew (E7), here or by their group's owner — and dead-lettered: judged again by a
clock that has moved on, one was applied, its dead letter saying it was refused. So the entries
refused are kept while a group made again could deliver them again, and acknowledged as they come again, their dead
letter standing — or, where the dead-letter stream no longer holds it (Redis back from older data lost it with the
entry's acknowledgement, one script wrote both; trimmed), written again with the reason it had: acknowledged from
memory alone, the entry was neither applied nor dead-lettered, a fact dropped with nothing said. Kept while their
stream holds them: a group made again starts at a bound only while Redis holds the token told with it, and Redis
may hold none (the token evicted or expired, a later tag in doubt or landing late, Redis back from older data) — then
from the stream's start. Bounded: each forgotten once its stream no longer holds
it (trimmed: before the oldest entry the last tag found there), at most ``REFUSED_KEPT`` per stream. This memory is
this process's, since its start: what another process refused, or this one before a restart, Redis keeps beside the
stream, asked for where a group was made again (``refused_kept.py``) and told here (``refused``).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator

from atp_service.intake.anew import entry_digest
from atp_service.intake.dead_letters import Why, fingerprint
from atp_service.intake.entries import Dead, Entry, id_key
from atp_service.storage.resp import group_lost

_SEQ_MAX = (1 << 64) - 1
BOUNDS_KEPT = 4
"""Bounds kept under the tokens told to Redis (``bounds.tag``): Redis back from older data holds one of the last few
(else a group made again starts from the stream's start)."""
REFUSED_KEPT = 10_000
"""Entries refused by the clock (E7) kept here per stream while its stream holds them (a group made again from the
stream's start delivers them again); past it the oldest is forgotten here — Redis keeps it still, and a group made
again has it asked for there (``refused_kept.py``, up to ``ingest_refused_kept``). Each kept with its dead letter's
id and reason (``Why``): about 600 bytes, some 6 MB per stream at most."""


def before(entry_id: bytes) -> bytes:
    """The id just before ``entry_id``: a group made at it delivers ``entry_id`` first."""
    ms, seq = id_key(entry_id)
    if seq:
        return b"%d-%d" % (ms, seq - 1)
    return b"%d-%d" % (ms - 1, _SEQ_MAX) if ms else b"0-0"


class Unacked:
    """Per stream, an id below every entry this reader may hold delivered and not acknowledged."""

    def __init__(self) -> None:
        self.seen: dict[str, bytes] = {}  # per stream, the newest entry id read (a group made again: its start)
        self._seen_digest: dict[str, str] = {}  # per stream, that entry's fields' digest, where it is that entry's
        self.again: dict[str, bytes] = {}  # per stream, its newest entry when its group was made (Redis's mark)
        self._refused: dict[str, list[tuple[tuple[int, int], bytes]]] = {}  # per stream, by id: refused by the clock
        self._letters: dict[tuple[str, bytes], tuple[Why, bytes, str | None]] = {}  # each: why, its letter, digest
        self._first: dict[str, bytes] = {}  # per stream, its oldest entry as the last tag found it (``tag_answered``)
        self._left: dict[str, bytes] = {}  # entries left pending (to be read again from its own list)
        self._left_in_pass: dict[str, bytes] | None = None  # those left since a pass from the start began
        self._in_hand: dict[int, dict[str, bytes]] = {}  # batches being applied, each its lowest per stream
        self._held: dict[int, set[tuple[str, bytes]]] = {}  # batches being applied, each its entries
        self._next = 0
        self._first_pass: dict[str, bytes] | None = None  # where the first pass since the start is, while it is
        self._read_through = False  # a pass read the list through since the start
        self._nonce, self._told = os.urandom(8).hex().encode(), 0  # another reader's, a run before's: not ours
        self._tags: dict[bytes, dict[str, bytes]] = {}  # per token (oldest first), per stream a bound (none: "0")
        self._answered: list[bytes] = []  # the tokens whose tag Redis answered (oldest first): the bounds usable

    def hold(self, entries: Iterable[tuple[str, bytes, object]]) -> int:
        """A batch taken in hand; its token, for ``release``."""
        lowest: dict[str, bytes] = {}
        for stream, entry_id, _ in entries:
            _lower(lowest, stream, before(entry_id))
        for stream, bound in lowest.items():
            self._lower_tags(stream, bound)
        self._next += 1
        self._in_hand[self._next] = lowest
        self._held[self._next] = {(stream, entry_id) for stream, entry_id, _ in entries}
        return self._next

    def busy(self, entries: Iterable[tuple[str, bytes, object]]) -> set[tuple[str, bytes]]:
        """The entries of ``entries`` a batch in hand holds: delivered again to this reader (a group made again, a claim
        of its own entry) while that batch judges them. Judged again meanwhile, by a clock moved on, one was applied
        while the first batch's refusal (E7) landed, the entry pending to this very consumer: applied, its letter saying
        refused. Left pending instead, read again from the reader's own list once that batch settled."""
        ids = {(stream, entry_id) for stream, entry_id, _ in entries}
        return {one for held in self._held.values() for one in held & ids}

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[Entry]]:
        """A list for entries taken into the reader's pending list as they come (a claim, stream by
        stream): should the taking fail part-way, those in it are told to ``left``. Dropped with the
        failure, they were pending and known nowhere here, and a group lost (XGROUP DESTROY of each
        stream in turn, the next stream's claim refused NOGROUP) was made again past them: never read
        again, no dead letter. Known, they are read again (E8: a duplicate if applied meanwhile)."""
        got: list[Entry] = []
        try:
            yield got
        except BaseException:
            self.left((stream, entry_id) for stream, entry_id, _ in got)
            raise

    @contextlib.contextmanager
    def claiming(self, stream: str, start: bytes) -> Iterator[None]:
        """A claim of ``stream``'s entries from ``start`` on. Should it fail its outcome is unknown (its answer lost:
        Redis may have run it), and the entries it took, in this reader's pending list, are known nowhere here: a
        group deleted before a pass over that list read them was made again past them — never read again, no dead
        letter (E6). So every entry from ``start`` on is taken as left pending, until such a pass reads the list
        through. But not where it was refused ``NOGROUP``: ``XAUTOCLAIM`` itself refused, it took nothing (0-0: else the
        group made again at once after it read the whole stream again, entries dead-lettered written again)."""
        try:
            yield
        except BaseException as exc:
            if not group_lost(exc):
                self.left([(stream, start)])
            raise

    def release(self, token: int) -> None:
        """The batch settled: each of its entries acknowledged, or told to ``left``."""
        self._in_hand.pop(token, None)
        self._held.pop(token, None)

    def marked(self, marks: dict[str, bytes | None], read: dict[str, bytes] | None = None) -> None:
        """Each stream's made-again mark as Redis answered it with the entries it delivered (``again.py``). One
        forgotten there (None) is kept here while a batch in hand holds an entry at or before it (read before), or
        ``read`` does: per stream the lowest entry of the reply the marks were answered with (a pending read's,
        ``again.read_pending``) — Redis, back from older data since this reader was given the mark, may hold its
        entries pending without it, not without their need of the quarantine stream's check (E8)."""
        for stream, mark in marks.items():
            lows = [low[stream] for low in self._in_hand.values() if stream in low]
            if read and stream in read:
                lows.append(before(read[stream]))  # held as a batch in hand's are: the id just before the lowest
            if mark is not None:
                self.again[stream] = mark
            elif (kept := self.again.get(stream)) is not None and not any(id_key(low) < id_key(kept) for low in lows):
                del self.again[stream]

    def starts_at(self, stream: str, start: bytes, below: tuple[bytes, str] | None = None) -> None:
        """A group made on ``stream`` after ``start`` (or perhaps made: the answer lost): the entries after it come
        again, so a next loss of the group starts no later — where a pass over the reader's own pending list, empty in
        the new group, let go of the bounds that kept ``start``, the newest entry read must not stay past them.
        ``below``: the newest entry the stream held at or before ``start`` as the group was made, with its fields'
        digest (``unread._MAKE``). Taken for the newest entry read, and the bounds lowered to it: the stream holds
        none after it up to ``start``, nor ever will (its ids only grow), so the group made again there delivers the
        same entries, and a stream made anew before the next read is told by what it holds there (``anew.py``) — by
        ``start`` alone, no entry's id, one written anew from low ids past it was taken for the one read, its entries
        up to the bound never delivered. None there: from the stream's start, which is the same entries too."""
        self.seen.pop(stream, None)
        self._seen_digest.pop(stream, None)
        if start != b"0" and below is not None:
            self.seen[stream], self._seen_digest[stream] = below
            self._lower_tags(stream, below[0])
        else:
            for bounds in self._tags.values():
                bounds.pop(stream, None)

    def note_seen(self, stream: str, entry_id: bytes, flat: list[bytes] | None = None) -> None:
        """``entry_id`` read from ``stream`` with its fields ``flat`` (``seen``: the newest, and its digest)."""
        seen = self.seen.get(stream)
        if seen is None or id_key(entry_id) > id_key(seen):
            self.seen[stream] = entry_id
            if flat is None:
                self._seen_digest.pop(stream, None)
            else:
                self._seen_digest[stream] = entry_digest(flat)

    def seen_entry(self, stream: str) -> tuple[bytes, str] | None:
        """The newest entry read from ``stream`` and its fields' digest ('' where not known: read with none, deleted
        while pending), to tell a stream made anew (``bounds.start_again``); None: none read."""
        seen = self.seen.get(stream)
        return None if seen is None else (seen, self._seen_digest.get(stream, ""))

    def refused(self, entries: Iterable[tuple[Dead, bytes]]) -> None:
        """Entries dead-lettered by a judgement of the clock (E7), each with its dead letter's id: not judged again if
        they come again — with the fields they had (their digest: none known, by their ids alone)."""
        for (stream, entry_id, fields, why), letter in entries:
            kept = self._refused.setdefault(stream, [])
            if not _has(kept, entry_id):
                bisect.insort(kept, (id_key(entry_id), entry_id))
            self._letters[(stream, entry_id)] = (why, letter, fingerprint(fields) if fields else None)
            self._drop(stream, len(kept) - REFUSED_KEPT)

    def _was_refused(self, stream: str, entry_id: bytes, fields: list[bytes] | None) -> bool:
        """The entry refused already (``refused``): its id, and its fields where their digest was kept. Another given
        its id (its stream made anew from low ids, its group made again by another process's reader: this one was told
        nothing) is not it — taken for it, a fact was dropped with the old entry's dead letter, none of its own. One
        read with no fields (deleted while pending) cannot be told from another: not it, as ``refused_kept.recall``
        has it — dead-lettered as any entry deleted while pending, not under a letter of another entry's fields."""
        if not _has(self._refused.get(stream), entry_id):
            return False
        digest = self._letters[(stream, entry_id)][2]
        return digest is None or (fields is not None and bool(fields) and fingerprint(fields) == digest)

    def judged(self, entries: list[Entry]) -> tuple[list[Entry], list[Dead]]:
        """``entries`` apart from those refused already (``refused``), which are dead-lettered as they were: their
        dead letters stand (``letters``: not written again while the dead-letter stream holds them)."""
        if not self._refused:
            return entries, []
        judged = [(stream, entry_id, fields or [], self._letters[(stream, entry_id)][0])
                  for stream, entry_id, fields in entries if self._was_refused(stream, entry_id, fields)]
        gone = {dead[:2] for dead in judged}
        return [entry for entry in entries if (entry[0], entry[1]) not in gone], judged

    def letters(self, dead: Iterable[Dead]) -> dict[tuple[str, bytes], bytes]:
        """Per entry of ``dead`` refused already (``refused``), the id of the dead letter written for it."""
        return {one[:2]: self._letters[one[:2]][1] for one in dead if self._was_refused(one[0], one[1], one[2])}

    def _drop(self, stream: str, count: int) -> None:
        """The ``count`` oldest entries refused on ``stream`` forgotten."""
        kept = self._refused.get(stream, [])
        for _, entry_id in kept[:max(count, 0)]:
            self._letters.pop((stream, entry_id), None)
        del kept[:max(count, 0)]
        if not kept:
            self._refused.pop(stream, None)

    def made_anew(self, stream: str) -> None:
        """``stream`` deleted and written again: its ids name other entries now. The entries refused are kept: each is
        told by its fields (``refused``), and a stream whose ids fall short of the entry read may be Redis back from
        older data, holding one refused here that it lost the refusal of — judged again by a clock moved on, applied."""
        self.seen.pop(stream, None)  # the old stream's: the newest read is counted again in the stream made anew
        self._seen_digest.pop(stream, None)
        self._first.pop(stream, None)

    def _forget_refused(self) -> None:
        """Each entry refused that no group made again can deliver again: trimmed away, before the oldest entry its
        stream held at the last tag. Not one at or before a bound told to Redis: a group made again starts there only
        while Redis holds that bound's token, else from the stream's start (``bounds.py``)."""
        for stream, kept in list(self._refused.items()):
            first = self._first.get(stream)
            if first is not None:
                self._drop(stream, bisect.bisect_left(kept, (id_key(first), b"")))

    def left(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Entries left pending: read again from the reader's own list (which a group deleted loses)."""
        for stream, entry_id in entries:
            _lower(self._left, stream, before(entry_id))
            self._lower_tags(stream, before(entry_id))
            if self._left_in_pass is not None:
                _lower(self._left_in_pass, stream, before(entry_id))

    def pass_begun(self) -> None:
        """A pass over the reader's own pending list from its start: every entry in it is read."""
        self._left_in_pass = {}
        if not self._read_through:
            self._first_pass = {}
            for bounds in self._tags.values():  # the run before's pending entries, anywhere in the list
                for stream in bounds:
                    bounds[stream] = b"0-0"

    def pass_at(self, stream: str, after: bytes) -> None:
        """A pass over the reader's own pending list goes on after ``after`` on ``stream``."""
        if self._first_pass is not None:
            self._first_pass[stream] = after

    def pass_read_through(self) -> None:
        """That pass read the list to its end: what it (and the batches meanwhile) left is all that is left."""
        if self._left_in_pass is not None:
            self._left, self._left_in_pass, self._first_pass = self._left_in_pass, None, None
            self._read_through = True

    def start(self, stream: str, seen: bytes) -> bytes:
        """Where a group made again on ``stream`` starts: after ``seen`` (the newest entry read), or
        before the oldest entry this reader may hold unacknowledged where that is older."""
        bounds = [self._left.get(stream), *(low.get(stream) for low in self._in_hand.values())]
        if self._first_pass is not None:  # the run before's pending entries, not all read yet
            bounds.append(self._first_pass.get(stream, b"0-0"))
        return min([seen, *(bound for bound in bounds if bound is not None)], key=id_key)

    def tag_begun(self) -> bytes:
        """A new token, to be told to Redis (``bounds.tag``): the bounds now kept under it, lowered from now on."""
        self._told += 1
        token = b"%s-%d" % (self._nonce, self._told)
        self._tags[token] = {stream: self.start(stream, seen) for stream, seen in self.seen.items()}
        return token

    def tag_answered(self, token: bytes, read: dict[str, tuple[bytes, bytes | None] | None],
                     first: dict[str, bytes | None] | None = None) -> None:
        """Redis holds ``token`` now, and held, as it set it, per stream the group's last delivered entry and the
        oldest pending in the group, with any consumer (``read``; None: no group there): the bounds kept under it no
        higher. ``first``: per stream, its oldest entry then (None: none): the entries refused before it forgotten."""
        bounds = self._tags.get(token)
        if bounds is None:
            return
        for stream, held in read.items():
            if held is None:
                bounds.pop(stream, None)
                continue
            _lower_known(bounds, stream, held[0])
            if held[1] is not None:
                _lower_known(bounds, stream, before(held[1]))
        self._answered.append(token)
        for old in self._answered[:-BOUNDS_KEPT]:
            self._tags.pop(old, None)
        del self._answered[:-BOUNDS_KEPT]
        for stream, oldest in (first or {}).items():
            if oldest is not None:
                self._first[stream] = oldest
        self._forget_refused()

    def tag_failed(self, token: bytes) -> None:
        """The token's tag refused or its answer lost: Redis may hold it; no bound is kept under it."""
        self._tags.pop(token, None)

    def tagged(self, stream: str) -> list[tuple[bytes, bytes]]:
        """Per token told to Redis (its tag answered), where a group made again on ``stream`` starts while Redis
        holds it (``0``: from the stream's start)."""
        return [(token, _made_at(self._tags[token].get(stream))) for token in self._answered]

    def _lower_tags(self, stream: str, bound: bytes) -> None:
        for bounds in self._tags.values():
            _lower_known(bounds, stream, bound)


def _made_at(bound: bytes | None) -> bytes:
    return b"0" if bound is None or bound == b"0-0" else bound


def _lower_known(bounds: dict[str, bytes], stream: str, bound: bytes) -> None:
    """``bound`` for ``stream`` where lower: none there is the stream's start already."""
    known = bounds.get(stream)
    if known is not None and id_key(bound) < id_key(known):
        bounds[stream] = bound


def _lower(bounds: dict[str, bytes], stream: str, bound: bytes) -> None:
    known = bounds.get(stream)
    if known is None or id_key(bound) < id_key(known):
        bounds[stream] = bound


def _has(kept: list[tuple[tuple[int, int], bytes]] | None, entry_id: bytes) -> bool:
    if not kept:
        return False
    at = bisect.bisect_left(kept, (id_key(entry_id), entry_id))
    return at < len(kept) and kept[at][1] == entry_id
