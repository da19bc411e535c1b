"""A serving process's life between its start and its stop (``atp-service serve``): the service started (the
demo estate loaded, where asked), ready, serving until a stop signal, a newer claim or a failed shard, then
its stop (``shutdown.py``); a start that fails said and stopped alike. SIGHUP reloads the estate (one sent
while starting: once serving, ``reload_signal``); SIGUSR1 logs what every task waits on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError

from atp_service.app.demo import load_demo
from atp_service.app.keyspace import StartupError
from atp_service.app.reload_signal import SignalledReloads
from atp_service.app.service import AtpService
from atp_service.app.shutdown import EXIT_STOP_OVERRAN, StopRequest, dump_tasks, exit_on_a_second_signal, shut_down
from atp_service.config import ServiceConfig
from atp_service.logs import say_on_stdout
from atp_service.tasks import cancel_and_wait
from reservation import DomainError

log = logging.getLogger("atp_service")


async def serve_until_stopped(config: ServiceConfig, service: AtpService, request: StopRequest,
                              stopped_early: Callable[[], bool]) -> int:
    """The exit status. An exception escaping once the start began is said, then the bounded stop (exit status 1):
    raised as it was, the service's tasks were left to asyncio.run's one cancel at the loop's end, which redis-py can
    lose (``tasks.cancel_and_wait``): the process hung there for good, its signals taken by a stop nobody waited on."""
    try:
        return await _serve_until_stopped(config, service, request, stopped_early)
    except StartupError:
        raise  # refused before serving, stopped already: exit status 2, saying why
    except Exception as exc:
        return await _failed_start(config, service, request, f"serving failed: {exc!r}")


async def _serve_until_stopped(config: ServiceConfig, service: AtpService, request: StopRequest,
                               stopped_early: Callable[[], bool]) -> int:
    reloads = _take_signals(service, request)
    if stopped_early():
        log.info("stop signal before the start: not started", extra={"event": "start_abandoned"})
        return 0
    starting = asyncio.ensure_future(service.start(serving=not config.demo))  # demo: SERVING once its estate is in
    if not await _first(starting, request.event):
        # Waiting for Redis, recovering: nothing was acknowledged yet. The stop cancels the start
        # and is bounded, a second signal exits at once, as for a stop after the start.
        log.info("%s while starting: the start is abandoned", "embedded Redis lost" if request.redis_gone
                 else "stop signal", extra={"event": "start_abandoned"})
        status = await shut_down(config, service, request)
        failure = starting.exception() if starting.done() and not starting.cancelled() else None
        if isinstance(failure, StartupError):
            raise failure  # it failed on its own first: exit status 2, saying why
        if failure is not None:  # Redis lost in the same turn as the stop, say
            log.error("the start failed: %r", failure, extra={"event": "stopping", "why": "start_failed"})
            return status or 1
        return status
    try:
        starting.result()
    except StartupError:
        await service.stop(grace_s=0)
        raise
    except Exception as exc:  # a failure of the start no stop signal explains (not a refusal: StartupError)
        return await _failed_start(config, service, request, f"the start failed: {exc!r}")
    if service.failed.is_set() or service.replaced.is_set():  # told to stop meanwhile: health NOT_SERVING, never ready
        return await shut_down(config, service, request)
    if config.demo and _fresh(service) and (stopped := await _demo(config, service, request)) is not None:
        return stopped
    if request.event.is_set() or service.failed.is_set() or service.replaced.is_set():
        return await shut_down(config, service, request)  # told to stop while the demo estate loaded: never ready
    await service.serve()  # demo: NOT_SERVING until its estate is in (callers were answered from an empty one)
    await reloads.serving(request.event)  # a SIGHUP while starting: its estate loaded before the ready line
    if request.event.is_set() or service.failed.is_set() or service.replaced.is_set():
        return await shut_down(config, service, request)  # told to stop meanwhile: never ready
    # Recovered state is long-lived: move it out of the collector's view.
    gc.collect()
    gc.freeze()
    _print_ready(config, service)
    await asyncio.wait([asyncio.ensure_future(event.wait()) for event in (request.event, service.replaced,
                                                                          service.failed)],
                       return_when=asyncio.FIRST_COMPLETED)
    return await shut_down(config, service, request)


def _fresh(service: AtpService) -> bool:
    """True when no shard has logged anything yet (first start)."""
    assert service.engine is not None
    return all(actor.seq == 0 for actor in service.engine.actors)


def _take_signals(service: AtpService, request: StopRequest) -> SignalledReloads:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request.event.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # operators: `kill -USR1` shows what waits on what
    reloads = SignalledReloads(service)
    loop.add_signal_handler(signal.SIGHUP, reloads.signalled)  # re-read the estate/channel file (once serving)
    return reloads


async def _failed_start(config: ServiceConfig, service: AtpService, request: StopRequest, why: str) -> int:
    """The start (or the demo estate's load) failed after the service began to serve: said, then
    the bounded stop; its exit status, or 1 (restart it)."""
    _, exc, _ = sys.exc_info()
    log.error("%s; stopping", why, exc_info=not isinstance(exc, DomainError | RedisError),  # those say it all
              extra={"event": "stopping", "why": "start_failed"})
    status = await shut_down(config, service, request)
    return 1 if status in (0, EXIT_STOP_OVERRAN) else status  # the start's failure first


async def _demo(config: ServiceConfig, service: AtpService, request: StopRequest) -> int | None:
    """Load the demo estate; None once loaded, else the exit status of the stop that followed. A
    stop signal meanwhile lets the load finish first (a demo estate left half loaded would stay so:
    the next start finds a logged keyspace); only the embedded Redis lost for good cuts it short."""
    if request.event.is_set():  # a stop signal came first: the next start finds the keyspace fresh
        return await shut_down(config, service, request)
    log.info("loading the demo estate", extra={"event": "demo_loading"})
    loading = asyncio.ensure_future(load_demo(service))
    if not await _first(loading, request.event) and not request.redis_gone:
        log.info("stop signal: the demo estate's load finishes first; another signal exits at once",
                 extra={"event": "shutdown"})
        exit_on_a_second_signal(request)
        await _first(loading, request.lost)
    if not loading.done():
        await cancel_and_wait(loading)
        log.info("the demo estate's load is abandoned: its Redis is lost", extra={"event": "start_abandoned"})
        return await shut_down(config, service, request)
    try:
        loading.result()
    except Exception as exc:
        return await _failed_start(config, service, request, f"the demo estate could not be loaded: {exc}")
    return None


async def _first(starting: asyncio.Future[None], stop: asyncio.Event) -> bool:
    """Wait for the start or a stop signal; True when the start ended first (its outcome in it)."""
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    return starting.done()


def _print_ready(config: ServiceConfig, service: AtpService) -> None:
    target = f"{config.host}:{service.port}"
    ctl = Path(sys.executable).with_name("atpctl")
    ctl_cmd = str(ctl) if ctl.exists() else "atpctl"
    metrics = (f"on http://{config.metrics_host}:{service.metrics_port}/metrics" if config.metrics_port >= 0
               else "off")
    banner = [f"ATP service ready: gRPC on {target}, metrics {metrics}"]
    if service.membership is not None:
        banner.append(f"  one of the processes of keyspace {config.key_prefix!r}: {len(service.membership.leases.held)}"
                      f" of {config.shards} groups here, {len(service.membership.members)} processes")
    if config.demo:
        # An id of this start's own: a start after the last one's suggestions were followed (the
        # reservation confirmed, fulfilled, expired) would suggest a confirm refused for its state.
        rid = f"demo-{secrets.token_hex(3)}"
        banner += ["Try:", f"  {ctl_cmd} --target {target} availability sku-00001@dc-east sku-00001@store-001",
                   f"  {ctl_cmd} --target {target} reserve {rid} sku-00001@dc-east:2 --ttl 600",
                   f"  {ctl_cmd} --target {target} confirm {rid}"]
    # One write: whoever waits for the "ready" line finds the whole banner with it.
    say_on_stdout("\n".join(banner))  # its reader gone: the banner is lost, not the serving
    log.info("ready: gRPC on %s, metrics %s", target, metrics, extra={  # the banner's line, for a log pipeline
        "event": "ready", "grpc": target, "metrics_port": service.metrics_port if config.metrics_port >= 0 else None})

