"""Which service process owns which shard group: what ``GetRouting`` answers.

Several service processes may share one keyspace, each owning some of the shard groups. The edge
does not decide ownership: the service hands the servicer a provider of the current
``RoutingTable`` (``AvailabilityServicer.routing``). Until it does, one process owns every group
(``single_process``), which is what a service alone on its keyspace is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from atp_client import MOVED_KEY, PLACEMENT, place
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import SERVING_KEY

__all__ = ["KEYS_MOST", "PLACEMENT", "Route", "RoutingTable", "groups_of", "routing_pb", "serving_of", "single_process"]
KEYS_MOST = 2**32 - 1
"""The largest ``max_availability_keys`` GetRouting carries (a uint32): a limit above it is told as it, no call
ever asking that many keys (``max_message_bytes`` is an int32, each key at least four bytes)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One group's owner: its advertised ``address`` ("" while no process owns the group) and the
    ``epoch`` of its claim (a takeover claims a higher one)."""

    group: int
    address: str
    epoch: int


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every group's route, as one process sees it now; ``address`` is that process's own."""

    shards: int
    address: str
    routes: tuple[Route, ...]


def single_process(shards: int, address: str) -> RoutingTable:
    """Every one of ``shards`` groups owned by the process at ``address`` (epoch 0)."""
    return RoutingTable(shards, address, tuple(Route(group, address, 0) for group in range(shards)))


def routing_pb(table: RoutingTable, max_availability_keys: int = 0) -> pb.GetRoutingResponse:
    """``GetRouting``'s answer: ``table``, and this process's ``max_availability_keys`` (a routing client,
    which splits a call's keys by group, refuses more before it sends any)."""
    return pb.GetRoutingResponse(
        shards=table.shards, placement=PLACEMENT, address=table.address,
        max_availability_keys=min(max_availability_keys, KEYS_MOST),
        groups=[pb.GroupRoute(group=r.group, address=r.address, epoch=r.epoch) for r in table.routes])


def serving_of(error: grpc.aio.AioRpcError) -> set[int] | None:
    """A peer's answer that it holds no such reservation (``GROUP_MOVED`` for group -1): the groups
    it answers for now. None: another answer."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    trailers = dict(cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ()))
    if not str(trailers.get(MOVED_KEY, "")).startswith("-1 "):
        return None
    return {int(g) for g in str(trailers.get(SERVING_KEY, "")).split(",") if g}


def groups_of(part: pb.RecordEventsRequest | pb.GetAvailabilityRequest | pb.LoadCountsRequest,
              shards: int) -> set[int]:
    """The groups (among ``shards``) of the SKUs a part of a call split by owner names (``Forwarder.ask_each``;
    a ``LoadCounts`` part names only the SKUs of its rows, ``edge.load``); none while no table was read (0 shards:
    the watch then ends the part once the routes name its owner for no group)."""
    if not shards:
        return set()
    if isinstance(part, pb.RecordEventsRequest):
        skus: Iterable[str] = (fact.sku for fact in part.events)
    elif isinstance(part, pb.GetAvailabilityRequest):
        skus = (key.sku for key in part.keys)
    else:
        skus = part.skus
    return {place(sku, shards) for sku in skus}
