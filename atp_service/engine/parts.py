"""The steps an order's saga takes on the groups of its parts (``Orders``), as typed messages: a
step runs on this process's shard where it owns the part's group, else it is sent to the process
that does (``Engine.remote``) and run there on the owner's shard, with the owner's fence. Every
step is idempotent, so a step whose answer was lost is simply taken again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from atp_service.engine.messages import Work
from atp_service.engine.shipments import ASK_EVERY, Asking, refused_for_good, unfulfilled
from reservation import (
    GIVEN_UP,
    DomainError,
    Fact,
    Ledger,
    Moved,
    NotFound,
    OrderStep,
    PendingOp,
    Reason,
    Reservation,
    ReserveCommand,
    ResourceExhausted,
    Unavailable,
)
from reservation import _order_losses as losses
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")
Shipped = tuple[Any, str]
"""A shipment's fact outcome and, where it fulfilled nothing, why (empty: fulfilled, or a duplicate)."""

Remote = Callable[[str, bytes], Awaitable[bytes]]
"""Sends a step request to the process at an address and returns its reply (raises ``Unavailable``
when the step's fate is not known: the peer did not answer)."""

UNDECIDED = ("outcome unknown: the order spans groups and a group's log did not answer a step of it (the order not "
             "decided yet, or its change not yet carried to every group); retry with the same id, which goes on from "
             "where it stopped")

STEP_METHOD = "/atp.internal.v1.Peers/Step"
"""The gRPC method a process runs other processes' steps at (bytes in, bytes out)."""


class ReservePart(msgspec.Struct, tag="reserve", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Reserve a part (a replay where it exists) of an order the saga sending it opened."""

    cmd: ReserveCommand


class ReserveOpened(ReservePart, tag="reserve-opened", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Reserve a part of an order opened before the saga sending it (decided again), ``opened`` then by its home's
    clock: a part resolved since is the order's own, however long ago (``_order_anew.forgotten``). A kind of its
    own, which a process of an earlier release refuses whole (``INVALID_ARGUMENT``), never judging by its clock."""

    opened: int


class ApplyShare(msgspec.Struct, tag="share", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Apply a part's share of its order's change."""

    part: str
    share: PendingOp


class ReleaseAsRead(ApplyShare, tag="share-as-read", array_like=True, frozen=True, forbid_unknown_fields=True):
    """A whole Release of a part only as read (``_orders.AS_READ``): a kind of its own, which a process of an earlier
    release refuses whole (``INVALID_ARGUMENT``) rather than release by the part's id alone whatever is there (Q3)."""


class ReadPart(msgspec.Struct, tag="read", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Read a part as durable."""

    part: str


class GiveUpPart(msgspec.Struct, tag="give-up", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Release a part of an order abandoned undecided, or put a tombstone in its place."""

    cmd: ReserveCommand


class CommitPart(msgspec.Struct, tag="commit", array_like=True, frozen=True, forbid_unknown_fields=True):
    """Make again a confirmed order's part Redis lost, its units committed (``_order_losses.commit_again``)."""

    part: Reservation


class ResolveOrder(msgspec.Struct, tag="resolve", array_like=True, frozen=True, forbid_unknown_fields=True):
    """At whichever process holds the order: resolve its record if every part is resolved (a
    shipment fulfilled a part at another process)."""

    order: str


class SettleOrder(msgspec.Struct, tag="settle", array_like=True, frozen=True, forbid_unknown_fields=True):
    """At whichever process holds the order: carry through the change it has pending (a shipment is
    about to fulfil its part at another process); the reply's ``part`` is the order, where held."""

    order: str


PartStep = (ReservePart | ReserveOpened | ApplyShare | ReleaseAsRead | ReadPart | GiveUpPart | CommitPart | ResolveOrder
            | SettleOrder)


class StepRequest(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A step sent to the peer owning ``group``. Every struct of a step, and of its reply, forbids
    elements past its last field: a step a newer build sent with a field this one does not know is
    refused whole (``INVALID_ARGUMENT``: nothing applied), never run without it."""

    group: int
    step: PartStep


class StepReply(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True,
                forbid_unknown_fields=True):
    """The part as it stands after the step, or the refusal (``reason`` > 0). ``serving``: where a
    ``SettleOrder``'s or ``ResolveOrder``'s order is not held, the groups the peer answered for (only
    they set the field: a peer of an earlier version answers a ``ResolveOrder`` with neither, so its
    groups count as not answered for)."""

    part: Reservation | None = None
    reason: int = 0
    message: str = ""
    metadata: dict[str, str] = {}
    serving: tuple[int, ...] = ()


_encode = msgspec.msgpack.Encoder().encode
_requests = msgspec.msgpack.Decoder(StepRequest)
_replies = msgspec.msgpack.Decoder(StepReply)


def work_of(engine: Engine, step: PartStep) -> Work:
    """``step`` as a shard's work."""
    limits = engine.limits
    if isinstance(step, ReservePart):
        opened = step.opened if isinstance(step, ReserveOpened) else 0
        return lambda ledger, now: engine.reserve_part(ledger, step.cmd, now, opened)
    if isinstance(step, ApplyShare):
        return lambda ledger, now: orders.apply_share(ledger, step.part, step.share, now, limits)
    if isinstance(step, GiveUpPart):
        return lambda ledger, now: losses.give_up_part(ledger, step.cmd, now, limits)  # another order's kept
    if isinstance(step, CommitPart):
        return lambda ledger, _now: losses.commit_again(ledger, step.part, limits)
    assert isinstance(step, ReadPart), step
    return lambda ledger, _now: _read(ledger, step.part)


def _read(ledger: Ledger, part: str) -> Reservation | None:
    return ledger.reservation(part)


def reserve_steps(order: Reservation, cmds: dict[int, ReserveCommand], fresh: bool) -> dict[int, PartStep]:
    """Each group's Reserve of its part of ``order`` (``cmds``: its shares), its opening time told (``ReserveOpened``)
    unless the saga sending them opened it (``fresh``: sent as before): an order decided again (its Reserve retried,
    its home back from older data) may meet parts of its own resolved long before, judged by its group's clock alone
    an earlier order's (R5)."""
    return {group: ReservePart(cmd) if fresh else ReserveOpened(cmd, order.created_at) for group, cmd in cmds.items()}


async def run_part(engine: Engine, group: int, step: PartStep) -> Any:
    """``step`` on ``group``'s shard: here, or at the process owning it."""
    actor = engine.actors[group]
    if not actor.vacant or engine.remote is None:
        return await actor.submit(work_of(engine, step))
    address, _ = engine.where(group)
    if not address:
        raise Moved(group, "")
    reply = _replies.decode(await engine.remote(address, _encode(StepRequest(group, step))))
    if reply.reason:
        raise refusal_of(reply)
    return reply.part


async def run_parts(engine: Engine, steps: dict[int, PartStep]) -> dict[int, Any]:
    """Every group's step at once (``run_part``), each durable; the first failure is raised once all
    have answered (a step is never left running unseen)."""
    groups = list(steps)
    results = await asyncio.gather(*(run_part(engine, g, steps[g]) for g in groups), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise undecided(result)
    return dict(zip(groups, results, strict=True))


async def on_shard(engine: Engine, shard: int, work: Callable[[Ledger, int], T], refused_as_is: bool = False) -> T:
    """``work`` on ``shard`` of this process, durable. ``refused_as_is``: the shard's refusal before it ran
    (shedding, its log unreachable) told as a one-group Reserve's is, not OUTCOME_UNKNOWN (a saga's first
    step: nothing written)."""
    try:
        answer = engine.actors[shard].submit(work)
    except DomainError as exc:
        raise exc if refused_as_is else undecided(exc) from None
    try:
        result: T = await answer
    except BaseException as exc:
        raise undecided(exc) from None
    return result


async def record_at(engine: Engine, shard: int, reservation_id: str) -> Reservation | None:
    """``reservation_id``'s record on ``shard`` of this process (None: none), read in its turn (``on_shard``)."""
    return await on_shard(engine, shard, lambda ledger, _now: ledger.reservation(reservation_id))


async def serve_part(engine: Engine, request: bytes) -> bytes:
    """Another process's step, run on a shard of this one (``Moved`` where it is not this one's now)."""
    asked = _requests.decode(request)
    if isinstance(asked.step, ResolveOrder):
        return _encode(await _resolve_here(engine, asked.step.order))
    if isinstance(asked.step, SettleOrder):
        return _encode(await _settle_here(engine, asked.step.order))
    try:
        if not 0 <= asked.group < len(engine.actors):
            raise Moved(asked.group, "")  # a peer with another shard count: never applied here
        part = await engine.actors[asked.group].submit(work_of(engine, asked.step))
    except DomainError as exc:
        return _encode(StepReply(None, int(exc.reason), exc.message, exc.metadata))
    return _encode(StepReply(part))


async def _resolve_here(engine: Engine, order_id: str) -> StepReply:
    """The order resolved here if every part is (``Orders.resolve_if_done``), as ``_settle_here`` answers:
    the record where held here, else the groups answered for, the refusal where it could not be resolved
    now. Said as nothing, a refusal went unheard: no later read, change or expiry resolves an order (a
    confirmed one never expires), its record left live at its home for good (R5)."""
    home = engine.home_of(order_id)
    if home is None or engine.orders is None:
        return StepReply(serving=tuple(engine.serving()))
    try:
        await engine.orders.resolve_if_done(order_id, home)
    except DomainError as exc:
        return StepReply(None, int(exc.reason), exc.message, exc.metadata)
    order = engine.actors[home].ledger.reservation(order_id)  # durable: the step above read or saved it
    return StepReply(order) if order is not None and order.is_order else StepReply(serving=tuple(engine.serving()))


async def _settle_here(engine: Engine, order_id: str) -> StepReply:
    """The order with its pending change carried through here (``Orders.read``): where it is not held
    here, the groups answered for (a group still being recovered here is not: its records may hold
    the order), the refusal where it could not be carried through now."""
    home = engine.home_of(order_id)
    if home is None or engine.orders is None:
        return StepReply(serving=tuple(engine.serving()))
    try:
        return StepReply(await engine.orders.read(order_id, home))
    except NotFound:  # forgotten meanwhile, or not an order
        return StepReply(serving=tuple(engine.serving()))
    except DomainError as exc:
        return StepReply(None, int(exc.reason), exc.message, exc.metadata)


async def shipped_elsewhere(engine: Engine, fact: Fact, ship: Callable[[Reservation | None], Awaitable[Shipped]],
                            asking: Asking = ASK_EVERY) -> Shipped:
    """A shipment fulfilling ``ship`` a part here of an order homed at another process: what the order
    has pending (a confirmation recorded, not yet applied by this part) carried through there first,
    as where the order is homed here (``Orders._shipment``) — else the part, still held, is not
    fulfilled, and the confirmation applied after commits units the shipment took from on_hand (Q3,
    R4); its record resolved there after, once every part is. The home refusing that step for good
    (``lasting``) does not refuse the fact: the units left, so the stock moves alone (``unfulfilled``).
    ``ship`` is given the order as its home answered the settle step (None: no process said it holds it), which tells
    whose the part here is (``shipments.fulfilling_its``). ``asking``: whom (the group its claim names: its owner
    alone, not every other process twice a fact)."""
    order_id = fact.reservation_id
    try:
        order = await _to_others(engine, SettleOrder(order_id), settled=True, asking=asking)
    except DomainError as exc:
        if not lasting(exc):
            raise  # taken again later, when the home has carried the change through
        return await on_shard(engine, engine.place(fact.sku), unfulfilled(fact, refused_for_good(order_id, exc)))
    result = await ship(order)
    # A part fulfilled (or the fact a duplicate: taken again after a refusal here): refused OUTCOME_UNKNOWN
    # until the home has heard, as a settle is — a record of an order left unresolved is counted live at its
    # home, and never forgotten, for good (R5). A shipment that fulfilled nothing resolves nothing, and its
    # answer must reach the caller (``FactDesk._tell_unfulfilled``: a duplicate after a refusal, never).
    await _to_others(engine, ResolveOrder(order_id), settled=not result[1], asking=asking)
    return result


def lasting(error: DomainError) -> bool:
    """Whether ``error`` refuses for good: its reason is not one that passes with time (``PASSING``), or an order
    was given up for it (``GIVEN_UP``: a retry of the order answers the same)."""
    return error.reason not in PASSING or error.metadata.get(GIVEN_UP) == "true"


async def tell_home(engine: Engine, order_id: str) -> None:
    """Ask every other process to resolve ``order_id`` if it holds it (its home is not known here)."""
    await _to_others(engine, ResolveOrder(order_id), settled=False)


async def _to_others(engine: Engine, step: ResolveOrder | SettleOrder, settled: bool, asking: Asking = ASK_EVERY
                     ) -> Reservation | None:
    """``step`` sent to every other process (an order's home is not known here), or to ``asking.group``'s owner alone,
    none of ``asking.unanswered`` (those failing added). ``settled``: the holder's refusal is raised, and so is
    UNAVAILABLE where none said it holds the order unless the processes that said "not here" answered for every group
    between them (for ``asking.group``), as a read's NOT_FOUND
    (``edge.forward``): one did not answer, a group has no known owner, or is being handed over or
    recovered (its new owner has not read its records yet) — it may hold the order, whose pending
    change must come first (Q3, R4): a shipment is then taken again later. ``settled``: the order as its holder
    answered (None: none did)."""
    if engine.remote is None:
        return None
    send = engine.remote
    groups, silent = range(len(engine.actors)) if asking.group < 0 else (asking.group,), asking.unanswered
    owners = sorted({engine.where(g)[0] for g in groups if engine.actors[g].vacant} - {""} - (silent or set()))
    request = _encode(StepRequest(-1, step))
    covered, held = set(engine.serving()), None  # held: the order as its holder answered
    for address, outcome in zip(owners, await asyncio.gather(*(send(address, request) for address in owners),
                                                             return_exceptions=True), strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            if silent is not None:  # not asked again in this call: counted as not answering
                silent.add(address)
        elif settled:
            reply = _replies.decode(outcome)
            if reply.reason:
                raise refusal_of(reply)
            held = reply.part if held is None else held
            covered.update(reply.serving)
    if settled and held is None and not covered >= set(groups):
        raise Unavailable(f"reservation_id: {step.order!r}: not every group answered for (its home did not "
                          "answer, or is changing hands); retry", Reason.OUTCOME_UNKNOWN)
    return held


def step_said(request: bytes) -> dict[str, Any]:
    """What a step request asks, as a log line's fields: ``step`` (its tag; a share with its kind), ``group``
    (-1: wherever the order is held) and ``reservation_id`` (the part's, or the order's)."""
    try:
        asked = _requests.decode(request)
    except msgspec.MsgspecError:  # never one this process encoded: a log line must not fail on it
        return {"step": "unreadable", "group": -1, "reservation_id": ""}
    step, tag = asked.step, type(asked.step).__struct_config__.tag
    if isinstance(step, ReservePart | GiveUpPart | CommitPart):
        rid = step.cmd.reservation_id if isinstance(step, ReservePart | GiveUpPart) else step.part.reservation_id
    else:
        rid = step.order if isinstance(step, ResolveOrder | SettleOrder) else step.part
    kind = f"{tag} {OrderStep(step.share.kind).name}" if isinstance(step, ApplyShare) else tag
    return {"step": kind, "group": asked.group, "reservation_id": rid}


def refusal_of(reply: StepReply) -> DomainError:
    """The peer's refusal as this process raises it: a retryable one stays retryable (the saga goes
    on later), a domain rule's stays final."""
    reason = Reason(reply.reason)
    kind = ResourceExhausted if reason in _EXHAUSTED else Unavailable if reason in _RETRYABLE else DomainError
    return kind(reply.message, reason, metadata=reply.metadata)


_EXHAUSTED = frozenset({Reason.SHARD_OVERLOADED, Reason.SERVICE_OVERLOADED, Reason.CAPACITY_REACHED})
_RETRYABLE = frozenset({Reason.OUTCOME_UNKNOWN, Reason.STORAGE_UNREACHABLE, Reason.CONCURRENT_CHANGE,
                        Reason.RECOVERING, Reason.SHUTTING_DOWN, Reason.SHARD_STOPPED, Reason.INSTANCE_REPLACED,
                        Reason.GROUP_MOVED})
PASSING = _EXHAUSTED | _RETRYABLE
"""The refusals that pass with time, whatever was asked: the service's own availability (a shard recovering or
stopped, a group between owners, Redis not answering, a write in doubt), overload, capacity. The input streams
keep an entry refused so pending for as long as they last (``intake.refusals.TRANSIENT``)."""


def undecided(exc: BaseException) -> BaseException:
    """A step that did not happen, or may not have: the order stays pending, and its caller hears
    that the outcome is not known yet. A refusal by a domain rule is passed on as it is, a part's
    group past its bound on records (CAPACITY_REACHED) too: it refuses that part until records there
    are resolved and forgotten, hours maybe, and the order is given up whole (R2: nothing stays held),
    as a one-group Reserve there is refused. Not a shard shedding load (RESOURCE_EXHAUSTED says
    nothing was applied, but the order is open and other parts may hold: a retry with the same id
    answers what was decided, R5)."""
    capacity = isinstance(exc, ResourceExhausted) and exc.reason == Reason.CAPACITY_REACHED
    if isinstance(exc, DomainError) and (capacity or not isinstance(exc, Unavailable | ResourceExhausted)):
        return exc
    if not isinstance(exc, Exception):
        return exc  # cancelled: the saga's own task is being stopped
    if not isinstance(exc, DomainError):
        log.warning("a step of an order spanning groups failed: %r", exc)
    return Unavailable(UNDECIDED, Reason.OUTCOME_UNKNOWN)

