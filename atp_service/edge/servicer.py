"""The typed async servicer of ``atp.v1.AvailabilityService``: validate, call the engine, convert."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import grpc

from atp_client import ACCEPTED_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.channels.desk import ChannelDesk
from atp_service.channels.estate import EstateUnusable
from atp_service.edge import convert
from atp_service.edge.availability import get_availability, keys_of
from atp_service.edge.calls import current as current_call
from atp_service.edge.drain import SHUTTING_DOWN, Drain
from atp_service.edge.errors import abort, rich_status, status_of
from atp_service.edge.explain import explain_availability
from atp_service.edge.fits import ReserveRoom
from atp_service.edge.forward import Forwarder
from atp_service.edge.load import load_counts
from atp_service.edge.observed import observed as _observed
from atp_service.edge.overload import LoopLagMonitor
from atp_service.edge.record import check_events, record_events
from atp_service.edge.routing import RoutingTable, routing_pb, single_process
from atp_service.edge.streams import OwnerStreams, SentInTurn, check_answer_size, when_settled
from atp_service.edge.watch import Watchers
from atp_service.engine.router import Engine
from atp_service.intake.facts import FactDesk
from atp_service.metrics import EdgeMetrics
from atp_service.tasks import exception_seen
from reservation import (
    DomainError,
    InvalidArgument,
    Limits,
    Moved,
    Reason,
    Reservation,
    ResourceExhausted,
    Unavailable,
    as_asked,
    check_id,
    check_safety_stock,
    count_block,
    partial_lines,
)

T = TypeVar("T")
Batches = asyncio.Queue[asyncio.Task[pb.ReserveStreamResponse] | None]
"""A ReserveStream's batches being decided, in the order they are answered; None: no more."""


class AvailabilityServicer(pb_grpc.AvailabilityServiceServicer):
    def __init__(self, limits: Limits, max_stream_inflight: int, watchers: Watchers,
                 reload: Callable[[], Awaitable[dict[str, int]]], metrics: EdgeMetrics | None = None, *,
                 max_reserve_streams: int, max_message_bytes: int = 4 << 20, peer_tls_root: bytes | None = None,
                 peer_tls_identity: tuple[bytes, bytes] | None = None) -> None:
        """``peer_tls_root``: when the service runs TLS, the PEM root its peer processes' certificates
        are verified with (calls forwarded to them use TLS); ``peer_tls_identity``: (key, certificate
        chain) this process presents to peers requiring client certificates."""
        self.limits = limits
        self.metrics = metrics or EdgeMetrics()
        self.forwarder = Forwarder(self.metrics, peer_tls_root, peer_tls_identity)
        self._latency: dict[tuple[str, str], Any] = {}  # (method, code) -> its histogram child
        self._engine: Engine | None = None
        self._desk: FactDesk | None = None
        self._channels: ChannelDesk | None = None
        self.no_channels = "estate: no channels are configured (start with --estate FILE)"
        """What a call needing channels is told when there are none (the service's mode decides the cure)."""
        self._max_inflight = max_stream_inflight
        self._max_streams = max_reserve_streams
        self.max_message_bytes = max_message_bytes  # gRPC's bound on every answer sent, a batch's too
        self._room = ReserveRoom(limits, max_message_bytes)
        """Refuses a Reserve, or an item of a ReserveStream batch, whose answer could pass it: before it is decided."""
        self.reserve_streams = 0
        """ReserveStream calls open now: at most ``max_reserve_streams``."""
        self._watchers = watchers
        self._reload = reload
        self.monitor: LoopLagMonitor | None = None
        self.tracer: Any = None
        """While tracing is on (``app.tracing``): refusals tag their call's span with the reason."""
        self.drain = Drain()
        """Every call passes through it; ``AtpService.stop`` closes it before gRPC stops."""
        self.metrics.calls_in_progress.follow(lambda: self.drain.active)
        self.address = ""
        self._shards = 0
        self.routing: Callable[[], RoutingTable] = self._one_process
        """Who owns which shard group now (``GetRouting``); the service sets it when processes share
        the keyspace. By default, this process owns every group (``advertise``)."""

    def advertise(self, address: str, shards: int) -> None:
        """This process's address as clients and peers reach it (host:port), once it listens: what
        it names itself in ``GetRouting`` and in the calls it forwards; and the number of groups."""
        self.address, self._shards = address, shards
        self.forwarder.address = address

    async def aclose(self) -> None:
        """Close the channels to peer processes: at the service's stop, once gRPC has stopped."""
        await self.forwarder.aclose()

    def _one_process(self) -> RoutingTable:
        if not self.address:
            raise Unavailable("service is starting: it does not know its own address yet; retry shortly",
                              Reason.RECOVERING)
        return single_process(self._shards, self.address)

    def latency(self, method: str, code: str) -> Any:
        """The latency histogram of ``method`` answered ``code`` (its children made once)."""
        child = self._latency.get((method, code))
        if child is None:
            child = self._latency[(method, code)] = self.metrics.rpc_seconds.labels(method, code)
        return child

    def attach(self, engine: Engine, desk: FactDesk, channels: ChannelDesk | None) -> None:
        """Start answering: recovery has finished."""
        self._engine, self._desk, self._channels = engine, desk, channels

    @property
    def channels(self) -> ChannelDesk:
        if self._channels is None:
            if self._engine is None:
                raise Unavailable("service is recovering its state; retry shortly", Reason.RECOVERING)
            raise EstateUnusable(self.no_channels)
        return self._channels

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise Unavailable("service is recovering its state; retry shortly", Reason.RECOVERING)
        return self._engine

    @property
    def desk(self) -> FactDesk:
        if self._desk is None:
            raise Unavailable("service is recovering its state; retry shortly", Reason.RECOVERING)
        return self._desk

    @_observed("Reserve", convert.reserve_answer)
    def Reserve(self, request: pb.ReserveRequest, context: Any) -> Awaitable[tuple[Reservation, bool]]:
        """Not a coroutine: ``_observed`` awaits the engine's decision itself, answered by ``reserve_answer``."""
        cmd = convert.reserve_cmd(request, self.limits)
        engine = self._engine or self.engine  # the property's frame only while recovering (it refuses)
        room = self._room  # its answer fits (or its retry replays), else nothing is decided:
        if engine.default_group_policy is not room.policy or len(request.lines) > room.lines_at_most:
            room.check(request, cmd, engine)  # its frame only where a line more could not fit (or a reload)
        return engine.reserve(cmd)

    @_observed("Confirm")
    async def Confirm(self, request: pb.ConfirmRequest, context: Any) -> pb.ConfirmResponse:
        rid = check_id("reservation_id", request.reservation_id, self.limits)
        return pb.ConfirmResponse(reservation=convert.reservation_pb(await self.engine.confirm(rid)))

    @_observed("Release")
    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        return pb.ReleaseResponse(reservation=await self._line_operation(request, "release"))

    @_observed("Fulfill")
    async def Fulfill(self, request: pb.FulfillRequest, context: Any) -> pb.FulfillResponse:
        return pb.FulfillResponse(reservation=await self._line_operation(request, "fulfill"))

    async def _line_operation(self, request: pb.ReleaseRequest | pb.FulfillRequest,
                              operation: Literal["release", "fulfill"]) -> pb.Reservation:
        """Release and Fulfil (``operation``: the engine's method): everything, or per line with an operation id
        (R3, R4, R5). The request is checked before the engine is asked for: its fault is told, not RECOVERING
        (reasons in precedence order)."""
        rid = check_id("reservation_id", request.reservation_id, self.limits)
        asked = convert.lines_of(request.lines)
        lines = partial_lines(asked, request.operation_id, self.limits)
        act: Callable[..., Awaitable[Reservation]] = getattr(self.engine, operation)
        try:
            return convert.reservation_pb(await act(rid, lines, request.operation_id))
        except InvalidArgument as exc:  # a line named as sent, not by its place among the summed ones (R1)
            raise as_asked(exc, asked) from None

    @_observed("GetReservation")
    async def GetReservation(self, request: pb.GetReservationRequest, context: Any) -> pb.GetReservationResponse:
        rid = check_id("reservation_id", request.reservation_id, self.limits)
        return pb.GetReservationResponse(reservation=convert.reservation_pb(await self.engine.get_reservation(rid)))

    @_observed("GetAvailability")
    async def GetAvailability(self, request: pb.GetAvailabilityRequest, context: Any) -> pb.GetAvailabilityResponse:
        keys = keys_of(request, self.limits)  # before the engine: its fault told, not RECOVERING (precedence)
        return await get_availability(request, keys, context, self.engine, self.forwarder)

    @_observed("RecordEvents")
    async def RecordEvents(self, request: pb.RecordEventsRequest, context: Any) -> pb.RecordEventsResponse:
        check_events(request, self.limits)  # before the engine: its fault told, not RECOVERING (precedence)
        return await record_events(request, context, self.engine, self.desk, self.forwarder, self.limits,
                                   self.metrics, self.max_message_bytes)

    @_observed("LoadCounts")
    async def LoadCounts(self, request: pb.LoadCountsRequest, context: Any) -> pb.LoadCountsResponse:
        if self._engine is None:  # recovering: a block at fault is told so, not RECOVERING (reasons in precedence)
            count_block(request.source, request.skus, request.locations,
                        (request.sku_index, request.location_index, request.on_hand, request.as_of), self.limits)
        return await load_counts(request, context, self.engine, self.desk, self.forwarder, self.limits)

    @_observed("ExplainAvailability")
    async def ExplainAvailability(self, request: pb.ExplainAvailabilityRequest,
                                  context: Any) -> pb.ExplainAvailabilityResponse:
        sku = check_id("sku", request.sku, self.limits)  # before the engine: its fault told, not RECOVERING
        location = check_id("location", request.location, self.limits)
        return await explain_availability(sku, location, self.engine, self.limits, self.max_message_bytes)

    @_observed("SetSafetyStock")
    async def SetSafetyStock(self, request: pb.SetSafetyStockRequest, context: Any) -> pb.SetSafetyStockResponse:
        sku = check_id("sku", request.sku, self.limits)
        location = check_id("location", request.location, self.limits)
        check_safety_stock("quantity", request.quantity, self.limits)
        q = await self.engine.set_safety_stock(sku, location, request.quantity)
        return pb.SetSafetyStockResponse(availability=convert.availability_pb(sku, location, q))

    async def WatchAvailability(self, request: pb.WatchAvailabilityRequest,
                                context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            check_id("channel", request.channel, self.limits)
            if self.monitor is not None:  # the door sheds unary calls alone: a snapshot's copy waits for a calm loop
                await self.monitor.until_calm(self.drain.shut_event)
            async with self.drain.streaming(self._watchers.watch(self.channels, request)) as messages:
                async for message in messages:
                    yield message
            if self.drain.closing:  # the watcher resumes from the last version it saw, elsewhere or later
                raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
        except DomainError as exc:
            await self._end_stream("WatchAvailability", started, context, exc)

    @_observed("ReloadEstate")
    async def ReloadEstate(self, request: pb.ReloadEstateRequest, context: Any) -> pb.ReloadEstateResponse:
        summary = await self._reload()
        return pb.ReloadEstateResponse(
            channels=[pb.ChannelSummary(name=n, published_keys=k) for n, k in sorted(summary.items())])

    @_observed("GetRouting")
    async def GetRouting(self, request: pb.GetRoutingRequest, context: Any) -> pb.GetRoutingResponse:
        return routing_pb(self.routing(), self.limits.max_availability_keys)

    async def ReserveStream(
        self, request_iterator: AsyncIterator[pb.ReserveStreamRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReserveStreamResponse]:
        """Batches are decided concurrently (up to max_stream_inflight) and answered in order; the
        items of groups other processes own are decided by their owners (``OwnerStreams``). On a
        graceful stop, batches already taken are answered, then the stream ends UNAVAILABLE."""
        started = time.perf_counter()
        try:
            self._enter_stream()
        except DomainError as exc:
            await self._end_stream("ReserveStream", started, context, exc)
        owners = OwnerStreams(self.forwarder, context)
        inflight: Batches = asyncio.Queue(self._max_inflight)
        cut_short, deciding = False, set[asyncio.Task[pb.ReserveStreamResponse]]()
        reader = asyncio.ensure_future(self._take_batches(request_iterator, owners, inflight, deciding))
        try:
            await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))  # a client writes only once it has it
            while (task := await inflight.get()) is not None:
                try:
                    answer = await asyncio.shield(task)  # a caller gone cuts the wait, not the decision (R8)
                except DomainError as exc:  # the service recovering or stopping: a status, not UNKNOWN
                    await self._end_stream("ReserveStream", started, context, exc)
                yield answer
            try:
                cut_short = await reader
            except DomainError as exc:  # a batch past the limit, once the batches before it are answered
                await self._end_stream("ReserveStream", started, context, exc)
            await owners.finish()
        finally:
            reader.cancel()
            if reader.done() and not reader.cancelled():
                # Its error ends the stream above; a caller gone first: retrieved, else logged "never retrieved".
                reader.exception()
            when_settled(deciding, self._leave_stream)  # its place is held while its batches are decided
            await owners.aclose()  # a batch still being decided here gets its owners' parts refused
        if cut_short:
            await self._end_stream("ReserveStream", started, context, Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN))

    async def _end_stream(self, method: str, started: float, context: Any, exc: DomainError) -> None:
        """A stream ended by a refusal, counted as a unary call's is (``atp_rpc_duration_seconds``
        by its code): else a stream refused at its limit, cut short or ended in doubt shows nowhere."""
        self.latency(method, status_of(exc).name).observe(time.perf_counter() - started)
        await abort(context, exc)

    async def _take_batches(self, requests: AsyncIterator[pb.ReserveStreamRequest], owners: OwnerStreams,
                            inflight: Batches, deciding: set[asyncio.Task[pb.ReserveStreamResponse]]) -> bool:
        """A stream's batches, each being decided as it is read (in ``deciding`` until it is), queued to be
        answered in order (``max_stream_inflight`` at most), then the end mark (None). True: cut short by a stop."""
        try:
            if self.monitor is not None:  # a new stream too (the door sheds unary calls alone): its first batch waits
                await self.monitor.until_calm(self.drain.shut_event)
            async for batch in self.drain.until_closed(requests):
                self._check_batch_size(batch)  # before reading on: nothing after it is decided
                task = asyncio.ensure_future(self._reserve_batch(batch, owners))
                task.add_done_callback(exception_seen)  # a caller gone early leaves no "never retrieved"
                if (call := current_call()) is not None:  # a stop cuts this stream only once it is decided (R8)
                    call.hold(task)
                deciding.add(task)
                task.add_done_callback(deciding.discard)
                await inflight.put(task)
                if self.monitor is not None:  # the loop late: the next batch waits in flow control (a stop: not)
                    await self.monitor.until_calm(self.drain.shut_event)
        except asyncio.CancelledError:
            # The stream has ended (its caller gone): nobody reads the queue any more, so waiting for
            # room for the end mark in a full one would keep this task for ever (R8). The batches
            # queued are decided to their end all the same; a retry with their ids replays them.
            raise
        except Exception:
            await inflight.put(None)  # the batches before it are answered, then the error ends the stream
            raise
        await inflight.put(None)
        return self.drain.closing  # else the client ended its stream

    def _enter_stream(self) -> None:
        """A ReserveStream begins (``_leave_stream`` once its batches are decided), up to ``max_reserve_streams``."""
        self.drain.enter()
        if self.reserve_streams >= self._max_streams:
            self.drain.leave()
            self.metrics.capacity_refusals.labels("max_reserve_streams").inc()  # the capacity alert reads it
            raise ResourceExhausted(f"max_reserve_streams: {self._max_streams} ReserveStream calls are open "
                                    "already", Reason.CAPACITY_REACHED, metadata={"limit": "max_reserve_streams"})
        self.reserve_streams += 1

    def _leave_stream(self) -> None:
        self.reserve_streams -= 1
        self.drain.leave()

    def _check_batch_size(self, batch: pb.ReserveStreamRequest) -> None:
        """The stream ends with a batch past the limit (an answer per item would cost more), or of no
        reservations (a caller's bug, as a RecordEvents of no facts is: no item to carry its refusal),
        refused before the batches after it are read: none of them is decided while the stream ends unanswered."""
        if not batch.reservations:
            raise InvalidArgument("reservations", "a batch of no reservations: at least one is required")
        limit = self.limits.max_batch_reservations
        if len(batch.reservations) > limit:
            raise InvalidArgument("reservations", f"{len(batch.reservations)} exceed the limit "
                                  f"max_batch_reservations={limit}", Reason.LIMIT_EXCEEDED, "max_batch_reservations")

    async def _reserve_batch(self, batch: pb.ReserveStreamRequest, owners: OwnerStreams) -> pb.ReserveStreamResponse:
        started = time.perf_counter()
        outcomes: list[pb.ReserveOutcome | None] = []
        cmds = []
        room, engine = self._room, self._engine  # None: recovering (an item at fault is told so all the same)
        for req in batch.reservations:
            try:
                cmd = convert.reserve_cmd(req, self.limits)
                if engine is not None:  # an item whose answer could not be sent even alone: refused, not decided
                    room.check(req, cmd, engine)
                cmds.append(cmd)
                outcomes.append(None)
            except DomainError as exc:
                outcomes.append(pb.ReserveOutcome(reservation_id=convert.echoed_id(req.reservation_id, self.limits),
                                                  error=rich_status(exc)))
        if cmds and engine is None:
            engine = self.engine  # RECOVERING: an item could be decided, so the stream ends, nothing of it decided
        sent = SentInTurn([n for n, outcome in enumerate(outcomes) if outcome is None], batch, owners)
        decided = iter(zip(cmds, await engine.reserve_many(cmds, sent.now) if engine is not None else [], strict=True))
        answer = pb.ReserveStreamResponse()
        add = answer.outcomes.add
        moved: dict[int, Moved] = {}
        for n, item in enumerate(outcomes):
            if item is not None:
                add().CopyFrom(item)
                continue
            cmd, result = next(decided)
            if isinstance(result, Moved):  # another process's group: its owner's outcome, filled in below
                if n not in sent.items:  # refused so after the batch's turn (an order's): sent on now
                    moved[n] = result
                add()
            elif isinstance(result, DomainError):
                add(reservation_id=cmd.reservation_id, error=rich_status(result))
            else:
                outcome = add(reservation_id=cmd.reservation_id)
                convert.fill_reserve_response(outcome.response, *result)
        for n, outcome in (await sent.answers(moved)).items():
            answer.outcomes[n].CopyFrom(outcome)
        check_answer_size(answer, len(batch.reservations), self.max_message_bytes, bool(cmds))  # ends the stream
        self.latency("ReserveStream.batch", "OK").observe(time.perf_counter() - started)
        return answer
