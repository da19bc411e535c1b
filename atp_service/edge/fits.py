"""Answers within ``max_message_bytes``, which binds what the service sends as well as what it reads.

gRPC refuses to send a larger answer: RESOURCE_EXHAUSTED "Sent message larger than max", with no
reason, an ERROR in the log, and the same at every retry — for a change, after it was made and
durable, so that its caller took it for failed (R7) and made it again under new ids.

- ``ReserveRoom``: a Reserve (or a ReserveStream item) whose answer could pass the limit is refused
  before it is decided - unless its id was decided already (``Engine.remembers``): its retry answers the
  record (R5), bounded when it was decided, whatever groups a reload has widened since. Its answer
  is bounded by its lines and, for a line naming a location group, by the locations it may take
  units from (one allocation each); the reservation's own answer (Confirm, Release, Fulfill,
  GetReservation: a line per location) is bounded alike, so it fits too.
- ``check_settings``: a ``max_id_length`` with which not even one line of the longest ids fits is
  refused at start, naming both settings.
- ``routing_refusal``: GetRouting's answer, which has no pages, could pass the limit (every group at
  the longest address): a start is refused, a process joining with such an address said loudly.
- ``too_large``: any other unary answer found past the limit once made (``_observed``): a read is
  refused naming the limit (nothing done); a change says it was made (R7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.routing import KEYS_MOST, Route, RoutingTable, routing_pb
from reservation import DomainError, GroupPolicy, InvalidArgument, Limits, Reason, ReserveCommand, Unavailable

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

LIMIT = "max_message_bytes"
LINE_BYTES = 52
"""A plain line's answer beyond its ids (its location twice: the line's and its allocation's):
tags and lengths, four numbers (a negative ``available`` takes ten bytes), the allocation's own."""
GROUP_LINE_BYTES = 37
"""A group line's answer beyond its ids and its allocations."""
ALLOCATION_BYTES = 14
"""An allocation beyond its location: tags, lengths, its quantity."""
STATE_BYTES = 36
"""A ``LineState`` of the reservation beyond its ids: tags, lengths, four quantities."""
ANSWER_BYTES = 40
"""A ReserveResponse beyond twice its reservation id (once more in a stream's ``ReserveOutcome``)."""
RECORD_BYTES = 60
"""A ``Reservation`` beyond its ids: state, three times, the wrapping answer's tag and length."""
READS = {"GetReservation": ("reservation_id",), "GetAvailability": ("keys",), "GetRouting": (),
         "ExplainAvailability": ()}
"""The unary methods that change nothing, and the field a smaller call would change."""
NO_GROUPS: Mapping[str, tuple[str, ...]] = {}


def _bytes(text: str) -> int:
    return len(text.encode())


class ReserveRoom:
    """Refuses a Reserve whose answer could pass ``max_message_bytes``, before it is decided."""

    def __init__(self, limits: Limits, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._id_bytes = limits.max_id_length
        self.policy: GroupPolicy | None = None
        """The estate's group policy ``lines_at_most`` was found for (``engine.default_group_policy``)."""
        self.lines_at_most = 0
        """A request of at most this many lines always fits: ``check`` has nothing to refuse (a unary
        Reserve asks that itself, without ``check``'s frame, while ``policy`` is the engine's)."""
        self._widths: dict[str, tuple[int, int]] = {}
        """Per group: its locations, and the longest one's bytes (read once per estate, not per line)."""
        self._see(None)
        if self.lines_at_most < 1:
            raise ValueError(f"max_id_length: {limits.max_id_length} bytes is longer than a Reserve of one line of ids "
                             f"that long can be answered with (max_message_bytes={max_message_bytes}): at most "
                             f"{largest_id_length(max_message_bytes)}, or raise max_message_bytes")

    def check(self, request: pb.ReserveRequest, cmd: ReserveCommand, engine: Engine) -> None:
        """Refuse ``request`` (already validated as ``cmd``) when its answer could pass the limit. The
        hot path: one comparison, with the longest answer a line can have under the estate's groups."""
        policy = engine.default_group_policy  # every channel's policy has the same groups
        if policy is not self.policy:  # the estate (re)loaded: its widest group
            self._see(policy)
        if len(request.lines) > self.lines_at_most:
            refusal = self._refusal(request, policy)
            # Its id decided already: its retry answers the record (R5: replayed, or refused naming the
            # field that differs), bounded when it was decided - a reload widening a group since refused
            # the retry of a held reservation, "nothing was decided". Another process's: asked there.
            if refusal is not None and not engine.remembers(cmd):
                raise refusal

    def _see(self, policy: GroupPolicy | None) -> None:
        """How many lines of the longest ids, each naming the widest group, always fit."""
        self.policy = policy
        groups = NO_GROUPS if policy is None else policy.groups
        self._widths = {name: (len(members), max(map(_bytes, members), default=0)) for name, members in groups.items()}
        widest = max((n for n, _ in self._widths.values()), default=1)
        per_line = max(1, widest) * (3 * self._id_bytes + LINE_BYTES)
        self.lines_at_most = (self.max_message_bytes - 3 * self._id_bytes - RECORD_BYTES) // per_line

    def bound(self, request: pb.ReserveRequest, policy: GroupPolicy | None) -> int:
        """The bound (bytes) of this request's answer, and of its reservation's, from its own lines; a
        group line's from the locations it may split over (no more than its units)."""
        if policy is not self.policy:
            self._see(policy)
        rid = _bytes(request.reservation_id)
        answer = 2 * rid + ANSWER_BYTES
        record = rid + _bytes(request.order_ref) + _bytes(request.channel) + RECORD_BYTES
        widths = self._widths
        for line in request.lines:
            sku = _bytes(line.sku)
            width = widths.get(line.location)
            if width is None:
                location = _bytes(line.location)
                answer += sku + 2 * location + LINE_BYTES
                record += sku + location + STATE_BYTES
            else:
                split, location, group = min(width[0], line.quantity), width[1], _bytes(line.location)
                answer += sku + group + GROUP_LINE_BYTES + split * (location + ALLOCATION_BYTES)
                # A line not granted stays one line of the record, under the group's name.
                record += max(split * (sku + location), sku + group) + split * STATE_BYTES
        return max(answer, record)

    def _refusal(self, request: pb.ReserveRequest, policy: GroupPolicy | None) -> InvalidArgument | None:
        size = self.bound(request, policy)
        if size <= self.max_message_bytes:
            return None
        return InvalidArgument(
                "lines", f"{len(request.lines)} lines could take {size} bytes to answer (a line naming a group: one "
                f"entry per location it may take units from), past the limit {LIMIT}={self.max_message_bytes}: "
                "nothing was decided; reserve fewer lines (or fewer units of a group) per reservation",
                Reason.LIMIT_EXCEEDED, LIMIT)


def largest_id_length(max_message_bytes: int) -> int:
    """The longest ``max_id_length`` with which a Reserve of one line of the longest ids is answered
    within ``max_message_bytes`` (``ReserveRoom``: at least one such line always fits)."""
    return (max_message_bytes - RECORD_BYTES - LINE_BYTES) // 6


def check_settings(limits: Limits, max_message_bytes: int) -> None:
    """Refuse (``ValueError``, naming both settings) a ``max_id_length`` with which not even a Reserve of
    one line of the longest ids could be answered: every such Reserve would be refused, and answers
    the bound does not cover (GetReservation, explanations) pass gRPC's limit. Config cannot ask it
    itself (the bound is the edge's): ``atp-service`` asks it with the settings, ``ReserveRoom`` when built."""
    ReserveRoom(limits, max_message_bytes)


EPOCH_MOST = 2**64 - 1
"""The largest epoch a route can carry (a uint64: ten bytes)."""


def routing_refusal(shards: int, address: str, max_message_bytes: int, longest: str = "") -> str | None:
    """Why GetRouting's answer by the process at ``address`` could pass ``max_message_bytes`` - every
    group owned at ``longest`` (another process's address; else its own) under the largest epoch, and
    the largest ``max_availability_keys`` - or None. Its answer has no pages: past the limit it is
    refused (``too_large``), and a routing client has no table to route by."""
    widest = longest if len(longest) > len(address) else address
    size = routing_pb(RoutingTable(shards, address, tuple(Route(g, widest, EPOCH_MOST) for g in range(shards))),
                      KEYS_MOST).ByteSize()
    if size <= max_message_bytes:
        return None
    return (f"{LIMIT}: GetRouting's answer, {shards} groups (shards) at {widest!r}, could take {size} bytes, past "
            f"{LIMIT}={max_message_bytes}: routing clients could not read it; raise {LIMIT} to at least {size}, "
            "or lower shards, or advertise a shorter address")


def too_large(method: str, size: int, max_message_bytes: int) -> DomainError:
    """The refusal of a unary answer of ``size`` bytes that gRPC could not send: a read's (nothing
    done; ask for less), or a change's, which was made and stays made (R7: not told as failed; its
    retry answers the same, so the message says what would let it be read)."""
    said = f"{method}: its answer ({size} bytes) exceeds {LIMIT}={max_message_bytes}"
    if method in READS:
        fields = READS[method]
        return DomainError(f"{said}: nothing was done; ask for less in a call", Reason.LIMIT_EXCEEDED, fields,
                           {"limit": LIMIT})
    return Unavailable(f"{said} and cannot be sent, but the change was made (retried as it was, it changes "
                       "nothing more and answers the same): raise max_message_bytes to read the answer",
                       Reason.OUTCOME_UNKNOWN, metadata={"limit": LIMIT})
