"""``RecordEvents``: facts validated one by one, applied by their shards, each answered in order.

With several processes on the keyspace, the facts of groups another process owns are sent on to
it, one call per owner with just its facts (``Forwarder.forward_facts``). A fact refused by its
shard refuses the whole call - one in doubt (``OUTCOME_UNKNOWN``) before any other, by a shard or an
owner (R7) - and some facts may be durable already, which the refusal then says (``_told``): a retry of
the call is safe (E8: each fact is applied once, by its identity). A caller to be redirected (it routes by itself,
or the call was forwarded already) is redirected before any fact is applied — unless a group is handed
over after that check and before its shard takes the fact: the ``GROUP_MOVED`` then says what was recorded.

Facts read from the input streams take the same way to their owners (``fact_sender``), carrying
the peer token, as the input streams' reader is no caller with a token of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import grpc

from atp_client import FORWARDED_KEY, MOVED_KEY, Refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.errors import carried_reason, carried_status, retold, retold_trailers, rich_status
from atp_service.edge.forward import Forwarder, Relayed, told_first
from atp_service.edge.isolate import NOTE, Budget, isolated, lasting_refusal
from atp_service.edge.ratelog import OncePerKey
from atp_service.engine.router import Engine
from atp_service.intake.entries import ENTRY_TIME_FIELD, FAR_FUTURE
from atp_service.intake.facts import FactDesk, Result
from atp_service.intake.owners import MAX_FAILING_OWNERS, SENDER_WRITES, SENDER_WRITES_KEY, FactSender, GroupRefused
from atp_service.metrics import EdgeMetrics
from reservation import DomainError, Fact, InvalidArgument, Limits, Moved, Reason, Unavailable
from reservation import fact as make_fact

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 5.0
"""How long an owner may take to answer facts sent from the input streams; past it their entries
stay pending and are read again (a fact applied meanwhile is then a duplicate, E8)."""
Ahead = tuple[int, Fact, InvalidArgument]
"""A fact of a request refused only as stamped in the future (E7): its index, the fact, the refusal."""
REFUSAL_LOG_S = 60.0
"""An owner refusing the peer token is logged once in this long: its entries stay pending for ever
until the token is fixed, and every pass over them would log it again."""
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
SHARD_REASONS = frozenset({Reason.OUTCOME_UNKNOWN, Reason.STORAGE_UNREACHABLE, Reason.SHARD_OVERLOADED,
                           Reason.SHARD_STOPPED})
"""An owner's refusals of a forwarded ``RecordEvents`` for one shard's trouble (a write in doubt, a Redis
Cluster primary down, a shard's queue full, a shard stopped): refused whole for it, the call is sent again
one call per group (``_send_part``). Not those of the owner as a whole (overloaded, recovering, stopping,
replaced) nor gRPC's own (a timeout, the owner unreachable), which are never retried group by group."""


async def record_events(request: pb.RecordEventsRequest, context: Any, engine: Engine, desk: FactDesk,
                        forwarder: Forwarder, limits: Limits, metrics: EdgeMetrics,
                        max_message_bytes: int = 4 << 20) -> pb.RecordEventsResponse:
    """The call's facts recorded (``check_events(request)`` passed), each answered in order."""
    out: list[pb.FactResult | None] = [None] * len(request.events)
    valid, at, ahead = _facts_of(request, engine.clock.now_ms(), limits, metrics, out)
    metadata = tuple(context.invocation_metadata() or ())
    _redirect_first(valid + [fact for _, fact, _ in ahead], engine, forwarder, metadata)
    moved: dict[str, list[int]] = {}
    elsewhere: Moved | None = None
    refusals: list[DomainError] = []
    sender_writes = {FORWARDED_KEY, SENDER_WRITES_KEY} <= {key for key, _ in metadata}  # from an input stream
    decided = list(zip(at, await desk.record(valid, "grpc", sender_writes=sender_writes), strict=True))
    if ahead:  # E7 against E8: applied already (by a process whose clock ran ahead), a duplicate
        judged = await desk.applied_or_refused([fact for _, fact, _ in ahead], [r for _, _, r in ahead], "grpc")
        decided += zip([n for n, _, _ in ahead], judged, strict=True)
    for n, result in decided:
        if isinstance(result, Moved) and result.owner:
            moved.setdefault(result.owner, []).append(n)
            elsewhere = elsewhere or result
        elif isinstance(result, InvalidArgument):  # stamped in the future (E7), never applied here
            _invalid(out, n, request.events[n], result, metrics, limits)
        elif isinstance(result, DomainError):
            refusals.append(result)
        else:
            outcome, reason = result
            answer = out[n] = pb.FactResult(event_id=request.events[n].event_id, outcome=cast(pb.FactOutcome, outcome))
            if reason:
                answer.quarantine_reason, answer.detail = convert.quarantine_reason(reason), reason
    if refusals:  # some facts may be durable already (a retry of the call is safe, E8); one in doubt is told (R7)
        raise _told(told_first(refusals), out)
    if elsewhere is not None:
        await _forward(request, context, forwarder, moved, elsewhere, out)
    response = pb.RecordEventsResponse(results=cast(list[pb.FactResult], out))
    _check_answer_fits(response, len(out), max_message_bytes)
    return response


def check_events(request: pb.RecordEventsRequest, limits: Limits) -> None:
    """Refuse a call of no facts (a caller's bug) or more than ``max_events_per_call``: before the engine is asked
    for, so it is told so, not RECOVERING (reasons in precedence order). Each fact's own fault is its answer."""
    if not request.events:  # answered OK, recording nothing: a feed that sent nothing looked healthy
        raise InvalidArgument("events", "at least one fact is required")
    if len(request.events) > (limit := limits.max_events_per_call):
        raise InvalidArgument("events", f"{len(request.events)} facts exceed the limit max_events_per_call={limit}",
                              Reason.LIMIT_EXCEEDED, "max_events_per_call")


async def _forward(request: pb.RecordEventsRequest, context: Any, forwarder: Forwarder, moved: dict[str, list[int]],
                   elsewhere: Moved, out: list[pb.FactResult | None]) -> None:
    """The facts of other owners' groups (``moved``: their indexes by owner) sent on, their answers put in
    ``out``; any owner's refusal refuses the call, saying what the call recorded (``_told``)."""
    refused: list[DomainError | Relayed] = []
    moved = {owner: sorted(at) for owner, at in moved.items()}  # E8: in the call's order, those stamped ahead too
    try:
        answers = await forwarder.forward_facts(request, moved, context, elsewhere)
    except Moved as redirected:  # handed over since ``_redirect_first``: the facts recorded here are told
        raise _told(redirected, out) from None
    for owner, answer in answers.items():
        if isinstance(answer, (DomainError, Relayed)):
            refused.append(answer)
            continue
        for n, result in zip(moved[owner], answer.results, strict=True):
            out[n] = result
    if refused:  # R7: a part in doubt is told first, whatever another owner answered
        raise _told(told_first(refused), out, refused)


def _told(refusal: DomainError | Relayed, out: Sequence[pb.FactResult | None],
          refused: Sequence[DomainError | Relayed] = ()) -> DomainError | Relayed:
    """The refusal of some of the call's facts (a shard's, or an owner's), as the caller is told it: unchanged
    when no other fact was recorded; else saying, in words and in ``ErrorInfo`` metadata, what was — a refusal
    is no "nothing applied" for the call (the shed reasons' own words) once other facts are durable. An
    owner's refusal after its own shards recorded some counts those (it says so: ``facts_recorded``), every
    refusing owner's (``refused``), not only the one told: another's would read as nothing done."""
    recorded = [answer for answer in out if answer is not None and answer.outcome != pb.FACT_OUTCOME_INVALID]
    applied = sum(answer.outcome == pb.FACT_OUTCOME_APPLIED for answer in recorded)
    own = refusal.details if isinstance(refusal, Relayed) else refusal.message
    peers = [_recorded_before(one) for one in refused]
    total, applied = len(recorded) + sum(n for n, _ in peers), applied + sum(n for _, n in peers)
    if not total:  # a ``Moved`` too: "nothing applied by this try" holds only then
        return refusal
    facts = {"facts_recorded": str(total), "facts_applied": str(applied), "facts_not_recorded": str(len(out) - total)}
    message = NOTE.sub("", own) + (
        f"; {total} of the call's {len(out)} facts were recorded ({applied} applied) and {len(out) - total} were "
        "invalid, refused or are in doubt: sending the same facts again is safe (E8: a fact recorded already is not "
        "applied twice)")
    if isinstance(refusal, Relayed):
        return Relayed(refusal.code, message,
                       retold_trailers(refusal.code, refusal.details, refusal.trailers, message, facts))
    return retold(refusal, message, facts)


def _recorded_before(refusal: DomainError | Relayed) -> tuple[int, int]:
    """(facts recorded, applied) of its part an owner says its shards recorded before one refused the rest."""
    if not isinstance(refusal, Relayed):
        return 0, 0
    told = Refusal.from_status(carried_status(refusal.code, refusal.details, refusal.trailers)).metadata
    return int(told.get("facts_recorded", "0")), int(told.get("facts_applied", "0"))


def _facts_of(request: pb.RecordEventsRequest, now: int, limits: Limits, metrics: EdgeMetrics,
              out: list[pb.FactResult | None]) -> tuple[list[Fact], list[int], list[Ahead]]:
    """The request's valid facts and their indexes; and those refused only as stamped in the future by
    this process's clock (E7), each with its index and refusal: refused only once their shard finds
    them not applied already (E8) — as the input streams judge them (``StreamIngestor``), whose reader
    sends a fact of a group it does not own here. The invalid ones answered in ``out``."""
    valid: list[Fact] = []
    at: list[int] = []
    ahead: list[Ahead] = []
    for n, ev in enumerate(request.events):
        try:
            fact, refusal = _fact_of(ev, now, limits), None
        except InvalidArgument as exc:
            try:  # every other check as before: only the future one passes with this clock
                fact, refusal = _fact_of(ev, FAR_FUTURE, limits), exc
            except InvalidArgument:
                _invalid(out, n, ev, exc, metrics, limits)
                continue
        if refusal is None:
            valid.append(fact)
            at.append(n)
        else:
            ahead.append((n, fact, refusal))
    return valid, at, ahead


def _fact_of(ev: pb.Fact, now: int, limits: Limits) -> Fact:
    return make_fact(event_id=ev.event_id, source=ev.source, kind=ev.kind, sku=ev.sku, location=ev.location,
                     quantity=ev.quantity, event_time=convert.ms_of(ev, "event_time"),
                     reservation_id=ev.reservation_id, now=now, limits=limits)


def _invalid(out: list[pb.FactResult | None], n: int, ev: pb.Fact, exc: InvalidArgument, metrics: EdgeMetrics,
             limits: Limits) -> None:
    metrics.facts.labels("grpc", convert.fact_kind_name(ev.kind), "invalid").inc()
    out[n] = pb.FactResult(event_id=convert.echoed_id(ev.event_id, limits), outcome=pb.FACT_OUTCOME_INVALID,
                           error=rich_status(exc.within(f"events[{n}]")))


def _check_answer_fits(answer: pb.RecordEventsResponse, facts: int, max_message_bytes: int) -> None:
    """An answer gRPC could not send (``max_message_bytes`` binds what the service sends too: an invalid
    fact's answer carries its error, larger than the fact) ended the call RESOURCE_EXHAUSTED "sent
    message larger than max", which a caller retried as it was, for ever, never told what was applied
    nor which facts were invalid. Answered OUTCOME_UNKNOWN naming the limit: the valid facts were
    applied; the same facts in smaller calls answer each (E8: a fact applied already is a duplicate)."""
    size = answer.ByteSize()
    if size > max_message_bytes:
        raise Unavailable(f"the answer to {facts} facts ({size} bytes) exceeds max_message_bytes={max_message_bytes}: "
                          "the valid ones were applied; send the same facts in smaller calls, which answers each",
                          Reason.OUTCOME_UNKNOWN, metadata={"limit": "max_message_bytes"})


def _redirect_first(facts: Sequence[Fact], engine: Engine, forwarder: Forwarder,
                    metadata: tuple[tuple[str, Any], ...]) -> None:
    """Raises ``Moved`` for the first fact's group the call is refused for (the caller routes by
    itself or the call was forwarded already, or no process owns the group now) — before any fact
    is applied: a redirected call applies nothing of itself (API.md)."""
    for shard in dict.fromkeys(engine.place(fact.sku) for fact in facts):
        forwarder.owner_for(engine.local, shard, metadata)


def fact_sender(forwarder: Forwarder, token: str | None, limits: Limits, max_bytes: int,
                place: Callable[[str], int]) -> FactSender:
    """How the input streams' reader sends facts to the process owning their groups: ``RecordEvents``
    calls (with the peer token) of at most ``max_events_per_call`` facts and ``max_bytes`` (the
    owner's ``max_message_bytes``, which it shares); each fact's result there, or for each the refusal
    of its call (the owner's, or none came back in time). ``place``: a SKU's group."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    told = OncePerKey(REFUSAL_LOG_S, MAX_FAILING_OWNERS)  # bounded: owners come and go with deploys

    def log_refusal(owner: str, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() in _REFUSED and told.due(owner):
            log.error("process %s refused facts from the input streams: %s (set peer_token_file to the token "
                      "of a caller with the peer role); their entries stay pending", owner, exc.details())

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        out: list[Result | DomainError] = []
        for request in requests_of(facts, limits.max_events_per_call, max_bytes):
            part = facts[len(out):len(out) + len(request.events)]
            out += await _send_part(forwarder, owner, part, list(request.events), metadata, place, log_refusal,
                                    Budget())
        return out

    return send


async def _send_part(forwarder: Forwarder, owner: str, facts: Sequence[Fact], events: list[pb.Fact],
                     metadata: tuple[tuple[str, str], ...], place: Callable[[str], int],
                     log_refusal: Callable[[str, grpc.aio.AioRpcError], None], budget: Budget,
                     split: bool = True) -> list[Result | DomainError]:
    """One request's facts sent (``fact_sender``). A call the owner refuses ``GROUP_MOVED`` (a group of it
    is not served there now: being handed over, or taken and not yet recovered) is sent again without that
    group's facts, left ``Moved`` (pending): refused whole, it held back the facts of the owner's other
    groups for as long as the hand-over lasted, the owner skipped meanwhile as failing (``OwnerSends``).
    A call refused for one shard's trouble there (``SHARD_REASONS``) is sent again as one call per group of
    it, all at once (``split``: once, those calls are not split again); a group whose call is refused so too
    keeps ``GroupRefused`` (pending, that group alone skipped at the owner). Refused whole, every fact of
    the owner's other groups waited as long as that one shard's trouble lasted. An owner that did not answer
    (a timeout, unreachable) or refused as a whole is not tried again group by group: each would wait as long.
    A call refused for a reason of one fact of it (``isolate.lasting_refusal``) is split until each fact has its
    own answer (``isolate.isolated``, ``budget``): else every fact sent with the culprit stayed pending with it."""
    out: list[Result | DomainError] = [Unavailable("not sent")] * len(facts)
    left = list(range(len(facts)))
    while left:
        request = pb.RecordEventsRequest(events=[events[i] for i in left])
        try:
            answer = await forwarder.send(owner, "RecordEvents", request, SEND_TIMEOUT_S, metadata, SENDER_WRITES)
        except grpc.aio.AioRpcError as exc:
            forwarder.counted("RecordEvents", "error")
            moved = _moved_of(exc)
            away = {i for i in left if place(facts[i].sku) == moved.group} if moved is not None else set()
            if moved is not None and away:  # a smaller call each time: at most one per group
                for i in away:
                    out[i] = moved
                left = [i for i in left if i not in away]
                continue
            answers = await _sent_again(forwarder, owner, [facts[i] for i in left], [events[i] for i in left],
                                        metadata, place, log_refusal, budget, exc, split)
            if answers is not None:
                for i, result in zip(left, answers, strict=True):
                    out[i] = result
                return out
            log_refusal(owner, exc)
            budget.end()  # a split sends it no other part
            refused = Unavailable(f"process {owner} did not take {len(left)} facts ({exc.code().name}: "
                                  f"{exc.details()}); read again later", Reason.OUTCOME_UNKNOWN)
            for i in left:
                out[i] = refused
            return out
        forwarder.counted("RecordEvents", "ok")
        if len(answer.results) != len(left):
            raise ValueError(f"{len(answer.results)} results for {len(left)} facts")
        for i, result in zip(left, answer.results, strict=True):
            out[i] = _in_entry_terms(convert.fact_result(result))
        return out
    return out


async def _by_group(forwarder: Forwarder, owner: str, facts: Sequence[Fact], events: list[pb.Fact],
                    metadata: tuple[tuple[str, str], ...], place: Callable[[str], int],
                    log_refusal: Callable[[str, grpc.aio.AioRpcError], None], budget: Budget, reason: Reason,
                    exc: grpc.aio.AioRpcError, split: bool) -> list[Result | DomainError]:
    """The facts of a call the owner refused for one shard's trouble (``reason``, ``exc``): sent again as
    one call per group, all at once, when they span several and ``split``; else each ``GroupRefused``. A
    group's send that fails (no channel to the owner now, an answer of the wrong length) fails them all, once
    every other has ended: raised at once, the others went on unseen, past the reader's stop."""
    groups: dict[int, list[int]] = {}
    for i, fact in enumerate(facts):
        groups.setdefault(place(fact.sku), []).append(i)
    out: list[Result | DomainError] = [Unavailable("not sent")] * len(facts)
    if split and len(groups) > 1:
        parts = await asyncio.gather(*(
            _send_part(forwarder, owner, [facts[i] for i in at], [events[i] for i in at], metadata, place,
                       log_refusal, budget, split=False) for at in groups.values()), return_exceptions=True)
        for part in parts:  # a group's send failed: told once every other has ended, none left running unseen
            if isinstance(part, BaseException):
                raise part
        for at, part in zip(groups.values(), cast(list[list[Result | DomainError]], parts), strict=True):
            for i, result in zip(at, part, strict=True):
                out[i] = result
        return out
    for group, at in groups.items():
        refusal = GroupRefused(group, f"process {owner} refused {len(at)} facts of group {group} ({reason.name}: "
                                      f"{exc.details()}); read again later", reason)
        for i in at:
            out[i] = refusal
    return out


async def _sent_again(forwarder: Forwarder, owner: str, facts: Sequence[Fact], events: list[pb.Fact],
                      metadata: tuple[tuple[str, str], ...], place: Callable[[str], int],
                      log_refusal: Callable[[str, grpc.aio.AioRpcError], None], budget: Budget,
                      exc: grpc.aio.AioRpcError, split: bool) -> list[Result | DomainError] | None:
    """The facts of a call the owner refused whole (``exc``), answered by sending them again: one call per
    group for one shard's trouble (``_by_group``); in halves until the culprit is alone for a reason of one
    fact of it (``isolate.isolated``). None for any other refusal: not sent again."""
    reason = _shard_reason(exc)
    if reason is not None:
        return await _by_group(forwarder, owner, facts, events, metadata, place, log_refusal, budget, reason, exc,
                               split)
    lasting = lasting_refusal(owner, exc)
    if lasting is None:
        return None

    def again(at: list[int]) -> Awaitable[list[Result | DomainError]]:
        return _send_part(forwarder, owner, [facts[i] for i in at], [events[i] for i in at], metadata, place,
                          log_refusal, budget, split)

    return await isolated(lasting, len(facts), again, budget)


def _shard_reason(error: grpc.aio.AioRpcError) -> Reason | None:
    """The reason of a refusal about one shard's trouble at the owner (``SHARD_REASONS``); None for any
    other (the owner's as a whole, gRPC's own: a timeout, the owner unreachable)."""
    trailers = cast(Sequence[tuple[str, Any]], error.trailing_metadata() or ())
    name = carried_reason(error.code(), error.details() or "", trailers)
    reason = Reason.__members__.get(name)
    return reason if reason in SHARD_REASONS else None


def _moved_of(error: grpc.aio.AioRpcError) -> Moved | None:
    """The group a ``GROUP_MOVED`` refusal names (``atp-moved``: "<group> <owner>") and its owner; None
    for any other refusal, or one naming no group."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    trailers = dict(cast(Sequence[tuple[str, Any]], error.trailing_metadata() or ()))
    group, _, owner = str(trailers.get(MOVED_KEY, "")).partition(" ")
    if not group.lstrip("-").isdigit() or int(group) < 0:
        return None
    return Moved(int(group), owner)


def _in_entry_terms(result: Result | DomainError) -> Result | DomainError:
    """An owner's refusal of a fact as the input streams name its field: the owner judged it as
    ``RecordEvents`` (E7 by its clock: ``event_time``), and the dead letter names the entry's field
    (``event_time_ms``), as the reader's own judgement of a fact of its own group does."""
    if isinstance(result, InvalidArgument) and result.field == "event_time":
        return InvalidArgument(ENTRY_TIME_FIELD, result.problem, result.reason, result.metadata.get("limit", ""))
    return result


REQUEST_MARGIN = 1024
"""Bytes of a ``max_message_bytes`` not filled with facts: gRPC's own framing and headroom."""


def requests_of(facts: Sequence[Fact], max_events: int, max_bytes: int) -> list[pb.RecordEventsRequest]:
    """``facts`` in order as ``RecordEvents`` requests of at most ``max_events`` facts and
    ``max_bytes`` encoded: a reader with a large ``ingest_count`` and long ids would otherwise send
    one an owner refuses as too large on every retry, its entries pending for good."""
    budget = max(max_bytes - REQUEST_MARGIN, 1)
    requests: list[pb.RecordEventsRequest] = []
    request, size = pb.RecordEventsRequest(), 0
    for fact in facts:
        event = convert.fact_pb(fact)
        cost = event.ByteSize() + 6  # the field's tag and length prefix
        if request.events and (len(request.events) >= max_events or size + cost > budget):
            requests.append(request)
            request, size = pb.RecordEventsRequest(), 0
        request.events.append(event)
        size += cost
    if request.events:
        requests.append(request)
    return requests
