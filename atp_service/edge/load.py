"""``LoadCounts``: a block of counts checked row by row, applied by their shards, answered in groups.

With several processes on the keyspace, the rows of groups another process owns are sent on to it,
one call per owner with just its rows (``Forwarder.ask_owners``), while this process loads its
own; the answers are merged back, each rejected row under its index in the caller's block. A
caller that routes by itself, or a call forwarded already, is redirected to the owner of the first
row held elsewhere before any row is loaded. A refusal by any part refuses the call: some rows may
be durable already, and loading the block again is safe (E8: each row is the COUNT fact
``(source, "count@<as_of>")``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.forward import Forwarder
from atp_service.engine.router import Engine
from atp_service.intake.facts import FactDesk
from reservation import CountRows, Limits, count_rows

Rows = npt.NDArray[np.intp]


async def load_counts(request: pb.LoadCountsRequest, context: grpc.aio.ServicerContext[Any, Any], engine: Engine,
                      desk: FactDesk, forwarder: Forwarder, limits: Limits) -> pb.LoadCountsResponse:
    block, errors = count_rows(
        request.source, list(request.skus), list(request.locations),
        (request.sku_index, request.location_index, request.on_hand, request.as_of),
        engine.clock.now_ms(), limits)
    loaded = np.ones(len(block) + len(errors), dtype=np.bool_)
    loaded[list(errors)] = False
    good = np.flatnonzero(loaded)  # the request row of each row of ``block``
    here, elsewhere = _split(block, engine, forwarder, tuple(context.invocation_metadata() or ()))
    parts = {owner: _part(block, rows) for owner, rows in elsewhere.items()}
    local = desk.load_counts(_rows(block, here), "load")
    if parts:  # the owners load theirs while this process loads its own
        (outcomes, reasons), answers = await asyncio.gather(local, forwarder.ask_owners("LoadCounts", parts, context))
    else:
        (outcomes, reasons), answers = await local, {}
    out = convert.load_counts_response(good[here], outcomes, reasons, errors)
    for owner, answer in answers.items():
        _merge(out, answer, good[elsewhere[owner]])
    return out


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
