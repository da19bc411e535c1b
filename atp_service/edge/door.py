"""What gRPC itself did with the calls at the door, from its channelz counters.

Calls refused by gRPC core because the queue ahead of the service is full (``max_pending_calls``)
never reach a handler, so the service's own metrics cannot see them. gRPC's channelz keeps, per
server, the calls started, succeeded and failed; a refused call is started and neither, so once
the calls in progress have finished, ``started - succeeded - failed`` counts the refusals (and
calls their clients cancelled before an answer). With the ``promise`` HTTP/2 transport gRPC answers
them RESOURCE_EXHAUSTED instead, and channelz counts them as failed. Exported as
``atp_grpc_server_calls_started_total`` and ``atp_grpc_server_calls_completed_total{outcome}``
(``succeeded``, ``failed``): the calls begun, and the ones answered, kept apart so that each series
means one thing and the difference is the alert.
"""

from __future__ import annotations

from collections.abc import Iterator

from grpc_channelz.v1 import channelz_pb2
from grpc_channelz.v1.channelz import ChannelzServicer  # type: ignore[attr-defined]  # re-exported, untyped
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

MAX_PAGES = 100
"""Pages of channelz's server list read at most (a process holds one server; tests a few)."""


def server_ids() -> set[int]:
    """Every gRPC server of this process that channelz knows of."""
    return {server.ref.server_id for server in _servers()}


def _servers() -> Iterator[channelz_pb2.Server]:
    start = 0
    for _ in range(MAX_PAGES):
        page = ChannelzServicer.GetServers(channelz_pb2.GetServersRequest(start_server_id=start), None)
        assert isinstance(page, channelz_pb2.GetServersResponse)
        yield from page.server
        if page.end or not page.server:
            return
        start = max(server.ref.server_id for server in page.server) + 1


class DoorCalls(Collector):
    """Sums the channelz call counters of the servers it watches: a service registers one with its
    metrics and watches its own server (channelz is per process; tests run several servers)."""

    def __init__(self) -> None:
        self._watched: set[int] = set()

    def watch(self, ids: set[int]) -> None:
        self._watched |= ids

    def forget(self, ids: set[int]) -> None:
        self._watched -= ids

    def counts(self) -> dict[str, int]:
        totals = {"started": 0, "succeeded": 0, "failed": 0}
        for server in _servers():
            if server.ref.server_id in self._watched:
                totals["started"] += server.data.calls_started
                totals["succeeded"] += server.data.calls_succeeded
                totals["failed"] += server.data.calls_failed
        return totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.counts()
        yield CounterMetricFamily(
            "atp_grpc_server_calls_started", "Calls gRPC core started (channelz); started - completed - in "
            "progress = refused at the door (max_pending_calls) or cancelled by their callers",
            value=counts["started"])
        completed = CounterMetricFamily(
            "atp_grpc_server_calls_completed", "Calls gRPC core answered (channelz), by outcome: succeeded "
            "(OK) or failed (any error status)", labels=["outcome"])
        for outcome in ("succeeded", "failed"):
            completed.add_metric([outcome], counts[outcome])
        yield completed

