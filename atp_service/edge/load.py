"""``LoadCounts``: a block of counts checked row by row, applied by their shards, answered in groups.

With several processes on the keyspace, the rows of groups another process owns are sent on to it,
one call per owner with just its rows (``Forwarder.ask_owners``), while this process loads its
own; the answers are merged back, each rejected row under its index in the caller's block. A
caller that routes by itself, or a call forwarded already, is redirected to the owner of the first
row held elsewhere before any row is loaded, and this process's own part is checked against
``max_positions_per_shard`` before any row goes to another process.

A refusal by any part refuses the call: one in doubt (``OUTCOME_UNKNOWN``, R7) before any other,
else this process's own, else the first owner's. Other parts are not undone — their rows are durable, and
the shards are separate logs with no common commit — so the caller is told what is true: a refusal
given after rows of other parts (other shards, other processes) were loaded keeps its status and
reason, and its message and ``ErrorInfo`` metadata say how many rows were loaded (``rows_loaded``,
``rows_applied`` of them) and how many were refused or are in doubt (``rows_not_loaded``). Loading
the whole block again is safe (E8: each row is the COUNT fact ``(source, "count@<as_of>")``, and
the rows loaded before count as ``duplicate``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from atp_client import Refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.errors import carried_status, retold, retold_trailers
from atp_service.edge.forward import Forwarder, Relayed, told_first
from atp_service.engine.router import Engine
from atp_service.intake.facts import FactDesk
from reservation import (
    CountRows,
    DomainError,
    Fact,
    FactKind,
    FactOutcome,
    InvalidArgument,
    Limits,
    Moved,
    count_rows,
)
from reservation._bulk import Outcomes, count_event_id
from reservation._validate import AHEAD

Rows = npt.NDArray[np.intp]
NOTHING_APPLIED = "; nothing applied"
"""How a refusal of a part says that nothing of it was applied (true of the part, not of the call)."""
PART_NOT_APPLIED = "; nothing of this part applied"
_NOTE = re.compile(r"; \d+ of the block's \d+ valid rows were loaded by other shards .*$", re.S)


async def load_counts(request: pb.LoadCountsRequest, context: grpc.aio.ServicerContext[Any, Any], engine: Engine,
                      desk: FactDesk, forwarder: Forwarder, limits: Limits) -> pb.LoadCountsResponse:
    block, errors = count_rows(
        request.source, list(request.skus), list(request.locations),
        (request.sku_index, request.location_index, request.on_hand, request.as_of),
        engine.clock.now_ms(), limits)
    loaded = np.ones(len(block) + len(errors), dtype=np.bool_)
    loaded[list(errors)] = False
    good = np.flatnonzero(loaded)  # the request row of each row of ``block``
    metadata = tuple(context.invocation_metadata() or ())
    block, good, ahead_here = _ahead_elsewhere(request, block, good, errors, engine, forwarder, metadata)
    here, elsewhere = _split(block, engine, forwarder, metadata)
    parts = {owner: _part(block, rows) for owner, rows in elsewhere.items()}
    mine = _rows(block, here)
    if parts:  # the owners load theirs while this process loads its own, once its own part fits
        desk.make_room(mine)
        (outcomes, reasons, refused), answers = await asyncio.gather(
            _local(desk, mine), forwarder.ask_each("LoadCounts", parts, context))
    else:
        (outcomes, reasons, refused), answers = await _local(desk, mine), {}
    loaded_before, unsure = await _loaded_ahead(request, errors, desk, ahead_here)
    out = convert.load_counts_response(good[here], outcomes, reasons, errors)
    out.duplicate += loaded_before
    peers_loaded = [0, 0]  # rows loaded, rows applied, by parts of other owners that refused the rest
    refusals: list[DomainError | Relayed] = [*([] if refused is None else [refused]), *unsure]
    for owner, answer in answers.items():
        if isinstance(answer, pb.LoadCountsResponse):
            _merge(out, answer, good[elsewhere[owner]])
        else:
            refusals.append(answer)
            peers_loaded = [a + b for a, b in zip(peers_loaded, _loaded_before_refusal(answer), strict=True)]
    if refusals:  # R7: a part in doubt is told, not another part's refusal (this process's own first otherwise)
        # The block's valid rows: its rows, and those ahead of the clock its shards judged (duplicates, unsure).
        raise _told(told_first(refusals), out, len(block) + loaded_before + len(unsure), *peers_loaded)
    return out


def _is_ahead(exc: InvalidArgument) -> bool:
    """A row refused only as stamped ahead of this process's clock (E7)."""
    return exc.field == "as_of" and AHEAD in exc.problem


def _ahead_elsewhere(request: pb.LoadCountsRequest, block: CountRows, good: Rows, errors: dict[int, InvalidArgument],
                     engine: Engine, forwarder: Forwarder, metadata: tuple[tuple[str, Any], ...],
                     ) -> tuple[CountRows, Rows, list[int]]:
    """``block`` and ``good`` with the rows stamped ahead of this process's clock whose groups other processes own
    added (taken out of ``errors``): sent on with their owner's part, judged there by its clock (loaded already:
    duplicates, E8), as RecordEvents sends their COUNT facts. Left refused where the caller is to be redirected.
    Also the ahead rows of groups served here (``_loaded_ahead`` asks their shards)."""
    ahead = [i for i, exc in errors.items() if _is_ahead(exc)]
    if not ahead:
        return block, good, []
    si = np.frombuffer(request.sku_index, dtype="<u4")
    moving: list[int] = []
    here: list[int] = []
    for i in ahead:
        try:
            owner = forwarder.owner_for(engine.local, engine.place(request.skus[int(si[i])]), metadata)
        except Moved:
            continue  # a caller routing by itself (or a forwarded call): refused here, as before
        (moving if owner else here).append(i)
    if not moving:
        return block, good, here
    for i in moving:
        del errors[i]
    rows = np.array(sorted(moving), dtype=np.intp)
    li = np.frombuffer(request.location_index, dtype="<u4")
    qty, at = (np.frombuffer(c, dtype="<i8") for c in (request.on_hand, request.as_of))
    # In the block's order (E8: its owner decides its part's rows in the call's order, as if sent one at a time):
    # appended, they went after every other row of that owner, an older count there applied rather than absorbed.
    request_rows = np.concatenate([good, rows])
    order = np.argsort(request_rows, kind="stable")
    extended = CountRows(block.source, block.skus, block.locations,
                         np.concatenate([block.sku_index, si[rows].astype(np.uint32)])[order],
                         np.concatenate([block.location_index, li[rows].astype(np.uint32)])[order],
                         np.concatenate([block.quantity, qty[rows].astype(np.int64)])[order],
                         np.concatenate([block.at, at[rows].astype(np.int64)])[order])
    return extended, request_rows[order], here


async def _loaded_ahead(request: pb.LoadCountsRequest, errors: dict[int, InvalidArgument], desk: FactDesk,
                        ahead: list[int]) -> tuple[int, list[DomainError]]:
    """Of ``ahead``, rows refused only as stamped ahead of this process's clock (E7) of groups served here, those
    their shard loaded already (a process whose clock ran ahead): duplicates (E8), as RecordEvents answers their
    COUNT facts; taken out of ``errors``, their number returned. Those of other processes' groups were sent on
    (``_ahead_elsewhere``), or stay refused (a caller to redirect) - never counted here. Also taken out of ``errors``:
    a row its shard could not judge or whose duplicate is not known durable (``not_durable``: its log's end unread,
    the shard stopped, its group another's since: ``Moved``), each with that refusal, which refuses the call (R7;
    RecordEvents refuses such a fact): rejected as bad input, it was never sent again, though its shard held it."""
    if not ahead:
        return 0, []
    si, li = (np.frombuffer(c, dtype="<u4") for c in (request.sku_index, request.location_index))
    qty, at = (np.frombuffer(c, dtype="<i8") for c in (request.on_hand, request.as_of))
    facts = [Fact(count_event_id(int(at[i])), request.source, FactKind.COUNT, request.skus[int(si[i])],
                  request.locations[int(li[i])], int(qty[i]), int(at[i]), "") for i in ahead]
    judged = await desk.applied_or_refused(facts, [errors[i] for i in ahead], "load")
    duplicates = [i for i, result in zip(ahead, judged, strict=True) if result == (FactOutcome.DUPLICATE, "")]
    unsure: list[DomainError] = []
    for i, result in zip(ahead, judged, strict=True):
        if isinstance(result, DomainError) and not isinstance(result, InvalidArgument):
            unsure.append(result)
            del errors[i]
    for i in duplicates:
        del errors[i]
    return len(duplicates), unsure


async def _local(desk: FactDesk, rows: CountRows) -> tuple[Outcomes, dict[int, str], DomainError | None]:
    """This process's part: each row's outcome (0: not loaded), and its refusal — also one given
    before any of its shards loaded, while other processes load theirs."""
    try:
        outcomes, reasons, refused = await desk.load_part(rows, "load")
    except DomainError as exc:
        return np.zeros(len(rows), dtype=np.uint8), {}, exc
    return outcomes, reasons, refused


def _told(refusal: DomainError | Relayed, out: pb.LoadCountsResponse, rows: int, peers_loaded: int = 0,
          peers_applied: int = 0) -> DomainError | Relayed:
    """The refusal of a part, as the caller is told it: unchanged when no row of the block was
    loaded; else saying, in words and in ``ErrorInfo`` metadata, what the other parts loaded —
    ``peers_*``: rows that owners which refused their part had loaded of it before (they say so)."""
    loaded = out.applied + out.absorbed + out.duplicate + out.quarantined + peers_loaded
    applied = out.applied + peers_applied
    if not loaded:
        return refusal
    facts = {"rows_loaded": str(loaded), "rows_applied": str(applied), "rows_not_loaded": str(rows - loaded)}
    note = (f"; {loaded} of the block's {rows} valid rows were loaded by other shards ({applied} applied) "
            f"and {rows - loaded} were refused or are in doubt: resending the whole block is safe (E8: the rows "
            "loaded count as duplicate)")
    if isinstance(refusal, DomainError):  # this process's own refusal
        return retold(refusal, refusal.message.replace(NOTHING_APPLIED, PART_NOT_APPLIED) + note, facts)
    return _relayed_with(refusal, note, facts)


def _relayed_with(refusal: Relayed, note: str, facts: dict[str, str]) -> Relayed:
    """An owner's refusal of its part, its message and ``ErrorInfo`` metadata saying ``note`` and ``facts``."""
    own = _NOTE.sub("", refusal.details)  # an owner's own note of its part: the block's is told instead
    message = own.replace(NOTHING_APPLIED, PART_NOT_APPLIED) + note
    trailers = retold_trailers(refusal.code, refusal.details, refusal.trailers, message, facts)
    return Relayed(refusal.code, message, trailers)


def _loaded_before_refusal(refusal: Relayed | DomainError) -> tuple[int, int]:
    """(rows loaded, rows applied) of its part an owner says it loaded before refusing the rest;
    none known of a part in doubt (``refusal_of``: the owner lost with it in hand, R7) - its rows
    are told as refused or in doubt."""
    if not isinstance(refusal, Relayed):
        return 0, 0
    told = Refusal.from_status(carried_status(refusal.code, refusal.details, refusal.trailers)).metadata
    if "rows_loaded" in told:
        return int(told["rows_loaded"]), int(told.get("rows_applied", "0"))
    return 0, 0


def _split(block: CountRows, engine: Engine, forwarder: Forwarder,
           metadata: tuple[tuple[str, Any], ...]) -> tuple[Rows, dict[str, Rows]]:
    """The block's rows loaded here, and those of each other owner; raises ``Moved`` for the first
    group held elsewhere when the caller is to be redirected — before any row is loaded."""
    shard_of_sku = np.array([engine.place(sku) for sku in block.skus], dtype=np.intp)
    shard_of_row = shard_of_sku[block.sku_index] if len(block) else np.zeros(0, dtype=np.intp)
    here = np.ones(len(block), dtype=np.bool_)
    elsewhere: dict[str, list[Rows]] = {}
    for shard in np.unique(shard_of_row).tolist():
        if owner := forwarder.owner_for(engine.local, shard, metadata):
            rows = np.flatnonzero(shard_of_row == shard)
            here[rows] = False
            elsewhere.setdefault(owner, []).append(rows)
    return np.flatnonzero(here), {owner: np.sort(np.concatenate(parts)) for owner, parts in elsewhere.items()}


def _rows(block: CountRows, rows: Rows) -> CountRows:
    """The rows ``rows`` of ``block``, with the block's dictionaries."""
    return CountRows(block.source, block.skus, block.locations, block.sku_index[rows], block.location_index[rows],
                     block.quantity[rows], block.at[rows])


def _part(block: CountRows, rows: Rows) -> pb.LoadCountsRequest:
    """The rows ``rows`` of ``block`` as a request of their own, naming only the SKUs and locations
    they use (the owner refuses dictionaries larger than the rows)."""
    skus, si = np.unique(block.sku_index[rows], return_inverse=True)
    locations, li = np.unique(block.location_index[rows], return_inverse=True)
    return pb.LoadCountsRequest(
        source=block.source, skus=_named(block.skus, skus), locations=_named(block.locations, locations),
        sku_index=si.astype("<u4").tobytes(), location_index=li.astype("<u4").tobytes(),
        on_hand=block.quantity[rows].astype("<i8").tobytes(), as_of=block.at[rows].astype("<i8").tobytes())


def _named(names: Sequence[str], used: npt.NDArray[np.uint32]) -> list[str]:
    return [names[j] for j in used.tolist()]


def _merge(out: pb.LoadCountsResponse, answer: pb.LoadCountsResponse, rows: Rows) -> None:
    """Fold an owner's answer into ``out``: its counts added, its rejected rows (indices into the
    part sent there, ``rows[k]`` in the caller's block) joined to the group of the same reason."""
    out.applied += answer.applied
    out.absorbed += answer.absorbed
    out.duplicate += answer.duplicate
    out.quarantined += answer.quarantined
    out.invalid += answer.invalid
    groups = {_reason(group): group for group in out.rejected}
    for group in answer.rejected:
        mine = groups.get(_reason(group))
        if mine is None:
            mine = groups[_reason(group)] = out.rejected.add()
            mine.CopyFrom(group)
            del mine.rows[:]
        merged = sorted([*mine.rows, *rows[list(group.rows)].tolist()])
        del mine.rows[:]
        mine.rows.extend(merged)


def _reason(group: pb.RejectedRows) -> tuple[int, int, str, bytes]:
    return group.outcome, group.quarantine_reason, group.detail, group.error.SerializeToString(deterministic=True)
