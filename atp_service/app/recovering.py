"""The start's engine (``AtpService``): the log opened, Redis checked (its ACL, its first reads), and either the
keyspace claimed and every shard recovered from it, or (``ownership = leases``) the process's membership joined,
its first share of the groups taken and recovered. Each step waits while Redis does not answer (``redis_wait``);
a shard that stops working, or a claim Redis lost, has the service restarted (R7)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from atp_service.app.keyspace import StartupError, replaced_said
from atp_service.app.membership import Membership
from atp_service.app.peering import peer_token
from atp_service.app.permissions import check_redis, first_reads
from atp_service.app.redis_wait import while_redis_is_away
from atp_service.app.tracing import Tracing
from atp_service.channels.estate import Estate
from atp_service.config import ServiceConfig
from atp_service.edge.peers import step_sender
from atp_service.edge.servicer import AvailabilityServicer
from atp_service.engine.clock import CountingClock
from atp_service.engine.recovery import UNRECOVERABLE, recover_actors
from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from atp_service.metrics import Metrics
from atp_service.storage.log import CommitWindow, LogStore
from atp_service.storage.nodes import open_nodes

log = logging.getLogger("atp_service.app.service")  # its lines the service's, as before they were moved here
T = TypeVar("T")


class Recovering:
    """``AtpService``'s start of its engine, and what stops the service to be restarted from Redis."""

    config: ServiceConfig
    metrics: Metrics
    clock: CountingClock
    redis_url: str
    estate: Estate
    tracing: Tracing | None
    membership: Membership | None
    _log: LogStore | None
    _servicer: AvailabilityServicer
    _must_restart: Callable[..., None]

    async def _recover(self) -> Engine:
        started, cfg = time.perf_counter(), self.config
        try:
            nodes = open_nodes(self.redis_url, cfg.redis_timeout_s, cluster=cfg.redis_cluster,
                               wait_replicas=cfg.redis_wait_replicas, wait_timeout_ms=cfg.redis_wait_timeout_ms)
        except ValueError as exc:  # an option of the URL the writes cannot work with
            raise StartupError(str(exc)) from None
        self._log = store = LogStore(nodes, cfg.key_prefix, cfg.pipeline_max, metrics=self.metrics.storage,
                                     window=CommitWindow(cfg.commit_delay_ms / 1000, cfg.commit_delay_min_rate))
        store.tracer = self._servicer.tracer = self.tracing.tracer if self.tracing else None
        # Each step waits for Redis, a blip or a failover after the first PING included: a start
        # fails only on a refusal waiting cannot cure (exit status 2), never on Redis being away.
        await self._while_redis_is_away(lambda: first_reads(nodes, self.redis_url, cfg))
        await self._while_redis_is_away(lambda: check_redis(store, cfg, list(self.estate.channels)))
        if cfg.ownership == "leases":
            return await self._join(store, started)
        # Before reading anything: an older instance still running on this keyspace can write no
        # more from here on, so what it wrote first is what recovery reads back.
        epoch = await self._while_redis_is_away(lambda: store.claim(cfg.shards))  # sent again: one claim
        store.on_fenced.append(self._on_replaced)
        log.info("owning keyspace %r as epoch %d", cfg.key_prefix, epoch,
                 extra={"event": "keyspace_owned", "key_prefix": cfg.key_prefix, "epoch": epoch})
        try:
            actors, replayed = await recover_actors(store, self.clock, cfg.engine_settings, self.metrics.engine,
                                                    self._while_redis_is_away)
        except UNRECOVERABLE as exc:  # data not to serve from: exit 2
            raise StartupError(str(exc)) from None
        for actor in actors:
            actor.on_failure.append(self._on_shard_failed)
        self.metrics.engine.recovery_seconds.set(time.perf_counter() - started)
        self.metrics.engine.recovered_entries.set(replayed)
        took_s = time.perf_counter() - started
        log.info("recovered %d shards, %d log entries in %.2fs", cfg.shards, replayed, took_s, extra={
            "event": "recovered", "shards": cfg.shards, "entries": replayed, "duration_ms": round(took_s * 1000)})
        return Engine(actors, store, self.clock, cfg.engine_settings, self.metrics.engine)

    async def _join(self, store: LogStore, started: float) -> Engine:
        """``ownership = leases``: an engine whose shards are vacant until their groups are taken;
        the first share is taken (and recovered) before this returns: the start's recovery time."""
        cfg = self.config
        store.leased = True
        engine = Engine([], store, self.clock, cfg.engine_settings, self.metrics.engine)
        self.membership = membership = Membership(engine, store, cfg, self.clock, self.metrics.membership,
                                                  self.metrics.engine, self._must_restart)
        engine.on_install.append(lambda actor: actor.on_failure.append(membership.failed))  # re-recovered
        self._servicer.routing = self._servicer.forwarder.routing = self.membership.table
        membership.on_routes.append(self._servicer.forwarder.owners.routes_read)
        engine.remote = step_sender(self._servicer.forwarder, peer_token(cfg))
        await self.membership.start(self._while_redis_is_away)
        self.metrics.engine.recovery_seconds.set(time.perf_counter() - started)  # ATPSlowRecovery reads it
        log.info("serving keyspace %r as %s with %d of its %d groups (%d processes)", cfg.key_prefix,
                 self.membership.address, len(self.membership.leases.held), cfg.shards, len(self.membership.members))
        return engine

    def _on_shard_failed(self, actor: ShardActor) -> None:
        """Never a dead shard behind a health check saying SERVING: its memory is not to be trusted, its log is."""
        log.error("shard %d stopped working (%r): health NOT_SERVING; the service stops to be restarted",
                  actor.shard, actor.failure, extra={"event": "stopping", "why": "shard_failed", "shard": actor.shard})
        self._must_restart()

    def _on_replaced(self) -> None:
        """A write refused: this instance stops, for good (exit 3) or to be restarted (exit 4)."""
        assert self._log is not None
        self._must_restart(replaced=replaced_said(self._log, self.config.key_prefix))

    async def _while_redis_is_away(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until Redis answers it, health NOT_SERVING meanwhile (``redis_wait``)."""
        return await while_redis_is_away(self.redis_url, attempt, cluster=self.config.redis_cluster)
