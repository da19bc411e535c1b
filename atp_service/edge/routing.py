"""Which service process owns which shard group: what ``GetRouting`` answers.

Several service processes may share one keyspace, each owning some of the shard groups. The edge
does not decide ownership: the service hands the servicer a provider of the current
``RoutingTable`` (``AvailabilityServicer.routing``). Until it does, one process owns every group
(``single_process``), which is what a service alone on its keyspace is.
"""

from __future__ import annotations

from dataclasses import dataclass

from atp_client import PLACEMENT
from atp_client.pb.atp.v1 import atp_pb2 as pb

__all__ = ["PLACEMENT", "Route", "RoutingTable", "routing_pb", "single_process"]


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


def routing_pb(table: RoutingTable) -> pb.GetRoutingResponse:
    return pb.GetRoutingResponse(
        shards=table.shards, placement=PLACEMENT, address=table.address,
        groups=[pb.GroupRoute(group=r.group, address=r.address, epoch=r.epoch) for r in table.routes])
