"""``GetAvailability``: positions read from memory, each answered in the order asked.

With several processes on the keyspace, the keys of groups another process owns are asked of
their owners, one call per owner with just its keys, all at once (``Forwarder.ask_owners``); the
answer is ``possibly_stale`` when any part of it is. A caller that routes by itself, or a call
forwarded already, is redirected to the owner of its first key held elsewhere instead.
"""

from __future__ import annotations

from typing import Any, cast

import grpc

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.forward import Forwarder
from atp_service.engine.router import Engine
from reservation import InvalidArgument, Limits, Reason, check_id

STALE_KEY = "atp-possibly-stale"
"""Trailing metadata of an answer that may miss a change whose durability is not known yet."""


def keys_of(request: pb.GetAvailabilityRequest, limits: Limits) -> list[tuple[str, str]]:
    """The (sku, location) keys asked, checked against the limits."""
    limit = limits.max_availability_keys
    if not request.keys:
        raise InvalidArgument("keys", "at least one key is required")
    if len(request.keys) > limit:
        raise InvalidArgument("keys", f"{len(request.keys)} keys exceed the limit max_availability_keys={limit}",
                              Reason.LIMIT_EXCEEDED, "max_availability_keys")
    keys = []
    for n, key in enumerate(request.keys):
        check_id(f"keys[{n}].sku", key.sku, limits)
        check_id(f"keys[{n}].location", key.location, limits)
        keys.append((key.sku, key.location))
    return keys


async def get_availability(request: pb.GetAvailabilityRequest, keys: list[tuple[str, str]],
                           context: grpc.aio.ServicerContext[Any, Any], engine: Engine,
                           forwarder: Forwarder) -> pb.GetAvailabilityResponse:
    """The positions of ``keys`` (``keys_of(request)``: checked before the engine was asked for, so a request at
    fault is told so, not RECOVERING)."""
    here, elsewhere = _split(keys, engine, forwarder, tuple(context.invocation_metadata() or ()))
    local = [keys[n] for n in here]
    positions: list[pb.Availability | None] = [None] * len(keys)
    for n, (sku, location), q in zip(here, local, engine.availability(local), strict=True):
        positions[n] = convert.availability_pb(sku, location, q)
    stale = engine.storage_unsure(sku for sku, _ in local)
    if elsewhere:
        parts = {owner: pb.GetAvailabilityRequest(keys=[request.keys[n] for n in idx])
                 for owner, idx in elsewhere.items()}
        for owner, answer in (await forwarder.ask_owners("GetAvailability", parts, context)).items():
            for n, position in zip(elsewhere[owner], answer.positions, strict=True):
                positions[n] = position
            stale = stale or answer.possibly_stale
    if stale:
        context.set_trailing_metadata(((STALE_KEY, "1"),))
    return pb.GetAvailabilityResponse(positions=cast(list[pb.Availability], positions), possibly_stale=stale)


def _split(keys: list[tuple[str, str]], engine: Engine, forwarder: Forwarder,
           metadata: tuple[tuple[str, Any], ...]) -> tuple[list[int], dict[str, list[int]]]:
    """The indexes of the keys read here, and of those asked of each owner; raises ``Moved`` for the
    first key held elsewhere when its caller is to be redirected."""
    here: list[int] = []
    elsewhere: dict[str, list[int]] = {}
    for n, (sku, _) in enumerate(keys):
        owner = forwarder.owner_for(engine.local, engine.place(sku), metadata)
        (elsewhere.setdefault(owner, []) if owner else here).append(n)
    return here, elsewhere
