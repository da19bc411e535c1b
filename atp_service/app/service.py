"""Assembly: Redis log, recovery (``recovering.py``), shard actors, engine, gRPC server, health, metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import start_http_server

from atp_service.app.balancing import address_of
from atp_service.app.estate_file import read_estate
from atp_service.app.grpc_server import (
    SERVICE_NAME,
    add_services,
    advertised,
    bind,
    new_server,
    server_interceptors,
    unusable_host,
)
from atp_service.app.keyspace import StartupError, watch_eviction
from atp_service.app.membership import Membership
from atp_service.app.peering import peer_tls, peer_token
from atp_service.app.recovering import Recovering
from atp_service.app.stop_steps import Step, every_step
from atp_service.app.tracing import Tracing
from atp_service.app.watched import Watched
from atp_service.channels.desk import ChannelDesk
from atp_service.channels.estate import Estate, EstateUnusable, group_policies
from atp_service.config import ServiceConfig
from atp_service.config_values import LEASED_NO_CHANNELS
from atp_service.edge import transport
from atp_service.edge.calls import CallBook, stop_calls
from atp_service.edge.door import DoorCalls, server_ids
from atp_service.edge.open_services import Health
from atp_service.edge.overload import LoopLagMonitor
from atp_service.edge.record import fact_sender
from atp_service.edge.servicer import AvailabilityServicer
from atp_service.edge.watch import Watchers
from atp_service.engine.clock import CountingClock, SystemClock
from atp_service.engine.router import Engine
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import Metrics
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.keys import CHANNELS
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import connect_any
from atp_service.storage.records import UNCLAIMED
from atp_service.tasks import cancel_and_wait, exception_seen, finish_uncancelled, keep
from reservation import Reason, Unavailable

log = logging.getLogger(__name__)
DEMO_ESTATE = Path(__file__).with_name("demo_estate.toml")


class AtpService(Recovering):
    """One running service. ``start()`` binds, recovers, then reports SERVING; ``stop()`` drains."""

    def __init__(self, config: ServiceConfig, redis_url: str, clock: CountingClock | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        """This service's metrics (what its endpoint serves); each component records into its group."""
        self.metrics.engine.clock.retention.set(config.limits.retention_ms / 1000)  # what the clock alerts compare
        self.door = DoorCalls()
        """gRPC core's own counts of this service's calls, those refused before any handler included."""
        self.metrics.registry.register(self.door)
        self.redis_url = redis_url
        self.clock: CountingClock = clock or SystemClock()
        self.engine: Engine | None = None
        self.desk: FactDesk | None = None
        self.ingestor: StreamIngestor | None = None
        self.channels: ChannelDesk | None = None
        self.membership: Membership | None = None
        """With ``ownership = leases``: the groups this process owns, taken and given up."""
        self.estate = self._load_estate()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._health = Health(config.limits)
        self._calls = CallBook(config.shutdown_stall_s, self.metrics.edge.streams_cut_at_stop)
        peer_root, peer_identity = peer_tls(config) if config.ownership == "leases" else (None, None)
        watchers = Watchers(config.max_watchers, config.watch_batch, self.metrics.engine.capacity_refusals,
                            config.max_watch_snapshot_keys, config.max_message_bytes)
        self._servicer = AvailabilityServicer(config.limits, config.max_stream_inflight, watchers, self._reload_rpc,
                                              self.metrics.edge, max_reserve_streams=config.max_reserve_streams,
                                              max_message_bytes=config.max_message_bytes,
                                              peer_tls_root=peer_root, peer_tls_identity=peer_identity)
        if config.ownership == "leases":  # its start refuses an estate: "start with --estate" would not cure it
            self._servicer.no_channels = f"estate: no channels here: {LEASED_NO_CHANNELS}"
        self._log: LogStore | None = None
        self._monitor = LoopLagMonitor(config.max_loop_lag_ms, self.metrics.edge)
        self._owner_task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._grpc_start: asyncio.Future[None] | None = None
        self._server_stop: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._watched = Watched(self._must_restart)  # the desks' and checks' own tasks: none ends unseen
        self._reloading = asyncio.Lock()
        self.tracing = Tracing.configured(config)  # None unless tracing_endpoint is set
        self.replaced = asyncio.Event()
        """Set when a newer instance has claimed this keyspace: this one must stop (``serve`` exits 3)."""
        self.failed = asyncio.Event()
        """Set when a shard actor stopped working (a bug), or Redis lost this instance's claim: it must be
        restarted, which rebuilds the shards from Redis (``atp-service serve`` exits 4)."""

    def _note_transport(self) -> None:
        running = transport.active(os.environ)
        if running != self.config.http2_transport:
            # In-process: gRPC read GRPC_EXPERIMENTS at import (atp-service serve re-executes instead).
            log.warning("http2_transport %s configured but gRPC runs %s (set %s=%s before importing grpc)",
                        self.config.http2_transport, running, transport.ENV,
                        transport.experiments_for(self.config.http2_transport, os.environ.get(transport.ENV)))
        transport.note(running, self.config.max_pending_calls, self.config.stream_window_bytes)

    async def start(self, serving: bool = True) -> None:
        """Listen (health NOT_SERVING), recover every shard, start the desks; then SERVING (``serving`` False: at
        ``serve()``, the demo estate loaded first). A ``stop()`` meanwhile cancels it: it raises CancelledError,
        and ``stop()`` ends what it had started. Refused start-up (a bad setting, a mismatched layout): StartupError."""
        self._starting = asyncio.get_running_loop().create_task(self._start(), name="atp-start")
        await self._starting  # a caller's cancellation reaches the task, which this waits for
        if serving:
            await self.serve()

    async def serve(self) -> None:
        """Health SERVING, not over a NOT_SERVING said since the start began (a shard or task failed, a newer claim)."""
        for name in () if self.failed.is_set() or self.replaced.is_set() else ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _start(self) -> None:
        try:
            await self._listen()  # refused once gRPC started (metrics port): never left serving (hangs exit)
            self.engine = await self._recover()
        except BaseException:  # refused (a bad log, a mismatched layout): leave nothing listening behind
            await self._stop_server(0)
            if self.membership is not None:  # leases granted as the start was cancelled: given back first
                await self.membership.leases.given_back()
            if self._log is not None:
                await self._log.nodes.aclose()
            raise
        await self._start_desks()

    async def _listen(self) -> None:
        """The gRPC server (health NOT_SERVING meanwhile) and the metrics endpoint."""
        cfg = self.config
        before = server_ids()
        self._server = new_server(cfg, server_interceptors(cfg, self.tracing, self.metrics.edge))
        self.door.watch(server_ids() - before)  # this server's channelz counters (atp_grpc_server_calls_*)
        add_services(self._server, self._servicer, self._health, self.metrics.edge,
                     (lambda: self.engine) if cfg.ownership == "leases" else None, cfg, self._calls)
        self.port = bind(self._server, cfg)
        self._servicer.advertise(advertised(cfg, self.port), cfg.shards)  # refused where GetRouting could not fit
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # Never cancelled half-way (a stop in the start): grpcio breaks its serving task, a later stop may crash it.
        self._grpc_start = asyncio.ensure_future(self._server.start())
        await finish_uncancelled(self._grpc_start)
        self._note_transport()
        if cfg.metrics_port >= 0:
            try:
                server, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, registry=self.metrics.registry)
            except OSError as exc:
                why = exc.strerror if isinstance(exc, socket.gaierror) else \
                    unusable_host(cfg.metrics_host, first_only=True)  # it listens on the first address alone
                if why is not None:  # the host at fault, not the port
                    raise StartupError(f"metrics_host: cannot listen on {cfg.metrics_host}:{cfg.metrics_port}: {why}; "
                                       "choose another with --metrics-host / ATP_METRICS_HOST") from None
                raise StartupError(f"metrics_port: cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc}); "
                                   "choose another with --metrics-port / ATP_METRICS_PORT, or -1 to disable") from None
            self.metrics_port = server.server_port

    async def _start_desks(self) -> None:
        """The engine, housekeeping, the fact desk, the channel desk and the input streams."""
        cfg = self.config
        assert self.engine is not None
        self.engine.group_policies, self.engine.default_group_policy = group_policies(self.estate)
        self.engine.set_safety_defaults(self.estate.safety_defaults)
        self._watched.watch("housekeeping", self.engine.start())
        self._monitor.start()
        self._owner_task = asyncio.get_running_loop().create_task(self._check_owner(), name="owner-check")
        self._watched.watch("owner-check", self._owner_task)
        self._servicer.monitor = self._monitor
        self.desk = FactDesk(self.engine, cfg.quarantine_stream, cfg.side_stream_maxlen, self.metrics.intake)
        if self.estate.channels:
            store = ChannelStore.open(self.redis_url, cfg.key_prefix, self._epoch, cfg.redis_timeout_s,
                                      cfg.redis_cluster, (cfg.redis_wait_replicas, cfg.redis_wait_timeout_ms))
            self.channels = ChannelDesk(self.engine, self.estate, store, self.clock, cfg.channel_settings,
                                        self.metrics.channels)
            self.metrics.channels.export_channels(self.estate.channels)
            await self._while_redis_is_away(self.channels.start)  # a failed read changes nothing: tried again
            self._watched.watch("channel-desk", self.channels.task)
            self._watched.watch("channel-restamps", self.channels.restamps_task)  # C4: keys Redis lost, published again
        if cfg.input_streams:
            self.ingestor = self._ingestor(self.desk)
            await self._while_redis_is_away(self.ingestor.start)  # creating a group that exists is a no-op
            self._watched.watch("ingest", self.ingestor.task)
            self._watched.watch("ingest-backlog", self.ingestor.gauge_task)
        # Last: no call is answered (health NOT_SERVING, but a caller need not ask) before the input streams are read.
        self._servicer.attach(self.engine, self.desk, self.channels)

    def _ingestor(self, desk: FactDesk) -> StreamIngestor:
        """The input streams' reader. Leased, each process reads as a consumer of its own, named
        ``<consumer_name>@<advertised address>`` (the same after a restart: it re-reads its own
        pending entries first), and sends the facts of other processes' groups to their owners."""
        cfg = self.config
        client = connect_any(self.redis_url, cfg.redis_timeout_s + cfg.ingest_block_ms / 1000,
                             cluster=cfg.redis_cluster)
        # With channel feeds, smaller reads keep the event loop's turns short for the desk (C2).
        reads = min(cfg.ingest_count, cfg.ingest_count_publishing) if self.channels else cfg.ingest_count
        if self.membership is None:
            return StreamIngestor(client, desk, cfg.ingest_settings, self.clock, reads)
        settings = replace(cfg.ingest_settings, consumer_name=f"{cfg.consumer_name}@{self.membership.address}")
        send = fact_sender(self._servicer.forwarder, peer_token(cfg), cfg.limits, cfg.max_message_bytes,
                           desk.engine.place)
        departed = DepartedConsumers(client, list(settings.input_streams), settings.consumer_group,
                                     settings.consumer_name, self._live_addresses, cfg.claim_idle_ms,
                                     self.metrics.intake.ingest_consumers_removed, quarantine=cfg.quarantine_stream,
                                     redrawn=self.metrics.intake.ingest_quarantine_runs_redrawn)
        return StreamIngestor(client, desk, settings, self.clock, reads, send, departed)

    def _live_addresses(self) -> set[str]:
        """The addresses of the live processes as this one last read them: members, and holders of a group (a
        member whose registration lapsed for a slow call still holds its groups); empty: none read yet."""
        if self.membership is None or not self.membership.members:
            return set()
        members = {address_of(member) for member in self.membership.members}
        return members | {owner for owner, _ in self.membership.routes.values()} | {self.membership.address}

    def _load_estate(self) -> Estate:
        return read_estate(self.config.estate or (DEMO_ESTATE if self.config.demo else None), self.config.limits)

    async def reload_estate(self) -> dict[str, int]:
        """Re-read the estate file (SIGHUP, ReloadEstate): all or nothing (a bad file, channels off, Redis
        not answering: nothing changes), one at a time: an earlier reload waiting on Redis never lands last."""
        async with self._reloading:
            estate = self._load_estate()
            if self._starting is None or not self._starting.done():  # the desk may still be loading its feeds
                raise Unavailable("estate: the service is recovering its state; retry shortly", Reason.RECOVERING)
            if self.channels is None and self.config.ownership == "leases":
                raise StartupError(f"estate: nothing to reload: {LEASED_NO_CHANNELS}")
            if self.channels is None:
                raise StartupError("estate: channels were off at start; restart the service to turn them on")
            def swapped() -> None:  # with the desk's swap: a caller gone during its passes leaves no half (R8)
                self.estate = estate
                self.metrics.channels.export_channels(estate.channels)  # a channel added at 0, one taken out gone
                if self.engine is not None:
                    self.engine.group_policies, self.engine.default_group_policy = group_policies(estate)
                    self.engine.set_safety_defaults(estate.safety_defaults)
            try:
                # Its Redis reads come before it changes anything; the passes after the swap read no Redis.
                return await self.channels.reload(estate, swapped)
            except STORAGE_ERRORS as exc:  # nothing changed: retried once Redis answers
                raise Unavailable(f"estate: Redis did not answer ({exc}); nothing changed, retry") from None

    async def _reload_rpc(self) -> dict[str, int]:
        try:
            return await self.reload_estate()
        except StartupError as exc:
            raise EstateUnusable(str(exc)) from None  # every StartupError of a reload starts "estate: "

    async def _check_owner(self) -> None:
        """A replaced instance that only serves reads would write nothing to be refused: ask. Nor would an idle shard
        find that Redis lost entries it made durable (R7): each checks its log's end, leased too (a renewal reads no
        log; a lease restored from older data is still ours). And Redis's eviction policy, until CONFIG is refused."""
        assert self._log is not None
        asking = True
        while True:
            await asyncio.sleep(self.config.owner_check_s)
            try:
                if self.membership is None and not await self._log.still_owner():
                    return
                if self.engine is not None:
                    await self.engine.check_logs_reach()
                asking = asking and await watch_eviction(self._log, self.metrics.storage.eviction_unsafe)
            except STORAGE_ERRORS:  # Redis unreachable: the shards notice and say so; asked again later, on a cluster
                await self._log.nodes.read_map_again()  # its map read first: a failover's new primary, idle shards (R7)

    def _epoch(self) -> str:
        """This instance's claim on the channel feeds' group (``UNCLAIMED``: none, every write refused)."""
        return self._log.epochs.get(CHANNELS, UNCLAIMED) if self._log is not None else UNCLAIMED

    def _must_restart(self, replaced: bool = False) -> None:
        """Health NOT_SERVING, and ``atp-service serve`` stops to be restarted (``failed``: exit status 4),
        or for good (``replaced``, a newer instance's claim: exit status 3)."""
        (self.replaced if replaced else self.failed).set()
        for name in ("", SERVICE_NAME):
            keep(self._background, self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _stop_server(self, grace_s: float) -> None:
        """Stop gRPC once, whoever asks (an unwinding start, ``stop()``) and however often they are
        cancelled: two stops of one server at once crash gRPC's core (a segmentation fault in
        grpcio 1.85). A later caller waits for the first stop, whose grace stands."""
        if self._server is None:
            return
        if self._server_stop is None:
            self._server_stop = asyncio.get_running_loop().create_task(self._stop_grpc(grace_s), name="grpc-stop")
        await asyncio.shield(self._server_stop)

    async def _stop_grpc(self, grace_s: float) -> None:
        assert self._server is not None
        if self._grpc_start is not None:
            await asyncio.wait((self._grpc_start,))  # never stopped while its start runs
        await self._server.stop(grace_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop everything started; a start still under way is cancelled and unwound first.
        Stops once: a second caller waits for the first stop, whose grace stands."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace_s), name="atp-stop")
            self._stopping.add_done_callback(exception_seen)  # its callers, if any is left, still get it
        try:
            await asyncio.shield(self._stopping)
        except asyncio.CancelledError:  # given up (a bound): gRPC stopped now, never left serving at exit
            await self._stop_server(0)
            raise

    async def _stop(self, grace_s: float | None) -> None:
        """Every step, whatever an earlier one raised (``every_step``): the final snapshots above all."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):  # how the start ended is for its caller to hear
                await cancel_and_wait(self._starting)
        steps: list[Step] = [("health", self._health.enter_graceful_shutdown),
                             ("calls", lambda: stop_calls(self._servicer.drain, self._calls, grace)),
                             ("grpc", lambda: self._stop_server(0.0))]  # the calls left: stalled, or past the grace
        if (ingestor := self.ingestor) is not None:  # before the peer channels close: it sends facts over them
            steps.append(("ingest", lambda: self._watched.stopped(ingestor.stop())))
        steps += [("servicer", self._servicer.aclose), ("loop-lag", self._monitor.stop),
                  ("owner-check", lambda: self._watched.stopped(cancel_and_wait(self._owner_task)))]
        if (desk := self.desk) is not None:
            steps.append(("fact-desk", lambda: desk.stop(self.config.redis_timeout_s * 2)))
        if (channels := self.channels) is not None:
            steps += [("channel-desk", lambda: self._watched.stopped(channels.stop())),
                      ("channel-store", channels.store.aclose)]
        if self.membership is not None:  # every group handed over: drained, snapshotted, released
            steps.append(("membership", self.membership.stop))
        if (engine := self.engine) is not None:
            steps.append(("shards", lambda: engine.stop(snapshot=True)))
        steps += [] if self._log is None else [("log", self._log.nodes.aclose)]
        if (tracing := self.tracing) is not None:  # sends the spans still queued (bounded by the exporter's timeout)
            steps.append(("tracing", lambda: asyncio.to_thread(tracing.shutdown)))
        await every_step(steps)
