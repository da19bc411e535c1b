"""``atp-service serve``: run the service; ``atp-service config``: what it would run with. Every
setting is a flag and an ``ATP_*`` variable (settings.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError

from atp_service.app.allocator import set_mmap_threshold, set_numpy_hugepages
from atp_service.app.demo import load_demo
from atp_service.app.embedded_watch import EmbeddedRedisWatch, Watching
from atp_service.app.keyspace import StartupError
from atp_service.app.reload_signal import SignalledReloads
from atp_service.app.service import AtpService
from atp_service.app.settings import OUTPUT_FORMATS, add_setting_flags, given_settings, print_config
from atp_service.app.stop_steps import StopFailed
from atp_service.config import ServiceConfig
from atp_service.config_values import redacted
from atp_service.early_signals import ignore_reloads, noted, release_stops, stops_held
from atp_service.edge.fits import check_settings
from atp_service.edge.transport import reexec_for
from atp_service.logs import set_up_logging
from atp_service.storage.embedded_redis import (
    DataDirInUse,
    EmbeddedRedis,
    RedisDidNotStart,
    RedisNotInstalled,
    StartAbandoned,
)
from atp_service.tasks import cancel_and_wait, task_stacks
from reservation import DomainError

log = logging.getLogger("atp_service")
SHUTDOWN_SNAPSHOT_S = 60.0  # beyond the gRPC grace: time for every shard's final snapshot
SECOND_SIGNAL_AFTER_S = 2.0  # a stop signal this soon after the first is the same request again


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atp-service", description="Available-to-promise inventory service")
    sub = parser.add_subparsers(dest="command", required=True)
    add_setting_flags(sub.add_parser("serve", help="run the gRPC service"))
    show = sub.add_parser("config", help="print every setting's effective value and where it came from")
    show.add_argument("--format", choices=OUTPUT_FORMATS, default="text", dest="output",
                      help="text (aligned columns) or json (an object by setting name)")
    add_setting_flags(show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, sources = ServiceConfig.resolve(**given_settings(args))
        check_settings(config.limits, config.max_message_bytes)  # the answers' bound is the edge's
    except ValueError as exc:
        for line in str(exc).splitlines():
            print(f"atp-service: {line}", file=sys.stderr)
        return 2
    if args.command == "config":
        try:
            print_config(config, sources, args.output)
        except BrokenPipeError:  # `atp-service config | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    set_up_logging(config.log_level, config.log_format)
    return serve(config)


def serve(config: ServiceConfig) -> int:
    """Run the service until it is stopped; the exit status."""
    # Held from the check to a re-execution: a stop sent in between stays pending into the new process.
    with stops_held():
        if noted() is not None:  # a stop while the modules loaded: a re-execution would forget it
            log.info("stop signal before the start: not started", extra={"event": "start_abandoned"})
            return 0
        reexec_for(config.http2_transport)  # returns when gRPC already runs the configured transport
    set_mmap_threshold(config.malloc_mmap_threshold)  # before gRPC starts threads with arenas of their own
    set_numpy_hugepages(config.numpy_hugepages)  # before the first position column is allocated
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.install()
    early_stop = _EarlyStop()
    embedded = None
    redis_url = config.redis_url
    if redis_url is None:
        try:
            # A password of its own, made at each start: loopback TCP is open to every user of the host, who
            # would otherwise write the logs and claims, token or not. Tools read it from redis.url (owner only).
            embedded = EmbeddedRedis(config.data_dir / "redis", appendfsync=config.durability, unix_socket=True,
                                     password=secrets.token_urlsafe(32)).start(
                load_timeout_s=config.redis_load_timeout_s, abandon=early_stop.received)
        except StartAbandoned:
            log.info("stop signal while the embedded redis-server was starting: it was stopped",
                     extra={"event": "start_abandoned"})
            return 0
        except (RedisNotInstalled, DataDirInUse, RedisDidNotStart) as exc:
            print(f"atp-service: {exc}", file=sys.stderr)
            return 2
        redis_url = embedded.local_url  # the unix socket: less CPU per round trip than loopback TCP
        log.info("embedded redis-server on %s (AOF appendfsync=%s, data in %s)",
                 redacted(redis_url), config.durability, embedded.data_dir)
    try:
        # Every command and fact allocates a few short-lived objects, and recovery builds millions of
        # long-lived ones: collect young objects less often than CPython's default (700, 10, 10).
        gc.set_threshold(*config.gc_thresholds)
        status = asyncio.run(_serve(config, redis_url, on_hard_exit=embedded.kill_softly if embedded else None,
                                    stopped_early=early_stop.received, embedded=embedded))
    except StartupError as exc:
        print(f"atp-service: {exc}", file=sys.stderr)
        return 2
    finally:
        # The loop's close gave SIGHUP (a reload) and SIGUSR1 their default action, which terminates (uvloop
        # drops them): ignored again, so one sent while Redis stops or the process exits leaves its status be.
        ignore_reloads()
        if embedded is not None:
            embedded.stop()
    return status


EXIT_REPLACED = 3
"""Exit status when a newer instance claimed the keyspace (a supervisor should not just restart
this one: the two would take the keyspace from each other in turn)."""
EXIT_SHARD_FAILED = 4
"""Exit status when a shard actor stopped working (a bug, logged at ERROR): restart the service,
which rebuilds every shard from its log."""
EXIT_REDIS_FAILED = 5
"""Exit status when the embedded redis-server kept exiting (more than ``redis_restarts`` times in
10 minutes) or could not be started again: see its log (``<data_dir>/redis/redis.log``)."""
EXIT_STOP_OVERRAN = 6
"""Exit status when a stop signal's graceful stop did not finish within its bound (the grace, then
``SHUTDOWN_SNAPSHOT_S`` for the final snapshots) and was cut off: calls may have been cancelled and
shards left without their final snapshot. Nothing acknowledged is lost (it is in the log, R7): the
next start replays more of it. An orchestrator tells it from a clean stop (0)."""


class _EarlyStop:
    """Signals before the event loop takes them over (``_serve``), which can be minutes while the
    embedded redis-server loads a large AOF. SIGINT and SIGTERM are noted: the start is abandoned
    and that Redis stopped too, instead of the service killed the default way and its Redis left
    running alone. SIGHUP (a reload: the estate is read at start anyway) and SIGUSR1 are ignored."""

    def __init__(self) -> None:
        self.signal: int | None = noted()  # one that came while the modules loaded (early_signals)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._note)
        ignore_reloads()
        release_stops()  # a process re-executed with them held and entered here, not through ``catch_stops``

    def _note(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def received(self) -> bool:
        return self.signal is not None


async def _serve(config: ServiceConfig, redis_url: str, on_hard_exit: Callable[[], None] | None = None,
                 stopped_early: Callable[[], bool] = lambda: False, embedded: EmbeddedRedis | None = None) -> int:
    """Serve until a signal (exit status 0), a newer instance claims the keyspace (3), a shard
    stops working (4) or the embedded Redis keeps exiting (5); a signal's stop cut off at its bound:
    6. ``stopped_early``: a stop signal
    came before this took the signals over; ``embedded``: the Redis to watch and restart."""
    service = AtpService(config, redis_url)
    request = _StopRequest(on_hard_exit)
    watching = None if embedded is None else Watching(EmbeddedRedisWatch(
        embedded, config.redis_restarts, config.redis_load_timeout_s, service.metrics.storage.redis_restarts),
        on_give_up=request.watch_gave_up)
    try:
        status = await _serve_until_stopped(config, service, request, stopped_early)
    except Exception:
        if watching is None or watching.failure is None:
            raise
        log.warning("after the embedded Redis was lost", exc_info=True)  # its reason is logged already
        status = EXIT_REDIS_FAILED
    finally:
        if watching is not None:
            await watching.aclose()
    return EXIT_REDIS_FAILED if watching is not None and watching.failure is not None else status


class _StopRequest:
    """What ends serving, and how the stop goes: a signal, or the embedded Redis lost for good —
    then nothing in doubt can be settled nor any snapshot written, and the stop is not waited for
    past the grace period."""

    def __init__(self, on_hard_exit: Callable[[], None] | None) -> None:
        self.event, self.on_hard_exit = asyncio.Event(), on_hard_exit
        self.lost = asyncio.Event()
        """Set when the embedded Redis is gone for good (it kept exiting, or would not start again)."""

    @property
    def redis_gone(self) -> bool:
        return self.lost.is_set()

    def watch_gave_up(self, redis_down: bool) -> None:
        if redis_down:
            self.lost.set()
        self.event.set()


async def _serve_until_stopped(config: ServiceConfig, service: AtpService, request: _StopRequest,
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
        status = await _shut_down(config, service, request)
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
        return await _shut_down(config, service, request)
    if config.demo and _fresh(service) and (stopped := await _demo(config, service, request)) is not None:
        return stopped
    if request.event.is_set() or service.failed.is_set() or service.replaced.is_set():
        return await _shut_down(config, service, request)  # told to stop while the demo estate loaded: never ready
    await service.serve()  # demo: NOT_SERVING until its estate is in (callers were answered from an empty one)
    await reloads.serving(request.event)  # a SIGHUP while starting: its estate loaded before the ready line
    if request.event.is_set() or service.failed.is_set() or service.replaced.is_set():
        return await _shut_down(config, service, request)  # told to stop meanwhile: never ready
    # Recovered state is long-lived: move it out of the collector's view.
    gc.collect()
    gc.freeze()
    _print_ready(config, service)
    await asyncio.wait([asyncio.ensure_future(event.wait()) for event in (request.event, service.replaced,
                                                                          service.failed)],
                       return_when=asyncio.FIRST_COMPLETED)
    return await _shut_down(config, service, request)


def _fresh(service: AtpService) -> bool:
    """True when no shard has logged anything yet (first start)."""
    assert service.engine is not None
    return all(actor.seq == 0 for actor in service.engine.actors)


def _take_signals(service: AtpService, request: _StopRequest) -> SignalledReloads:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request.event.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # operators: `kill -USR1` shows what waits on what
    reloads = SignalledReloads(service)
    loop.add_signal_handler(signal.SIGHUP, reloads.signalled)  # re-read the estate/channel file (once serving)
    return reloads


async def _failed_start(config: ServiceConfig, service: AtpService, request: _StopRequest, why: str) -> int:
    """The start (or the demo estate's load) failed after the service began to serve: said, then
    the bounded stop; its exit status, or 1 (restart it)."""
    _, exc, _ = sys.exc_info()
    log.error("%s; stopping", why, exc_info=not isinstance(exc, DomainError | RedisError),  # those say it all
              extra={"event": "stopping", "why": "start_failed"})
    status = await _shut_down(config, service, request)
    return 1 if status in (0, EXIT_STOP_OVERRAN) else status  # the start's failure first


async def _demo(config: ServiceConfig, service: AtpService, request: _StopRequest) -> int | None:
    """Load the demo estate; None once loaded, else the exit status of the stop that followed. A
    stop signal meanwhile lets the load finish first (a demo estate left half loaded would stay so:
    the next start finds a logged keyspace); only the embedded Redis lost for good cuts it short."""
    if request.event.is_set():  # a stop signal came first: the next start finds the keyspace fresh
        return await _shut_down(config, service, request)
    log.info("loading the demo estate", extra={"event": "demo_loading"})
    loading = asyncio.ensure_future(load_demo(service))
    if not await _first(loading, request.event) and not request.redis_gone:
        log.info("stop signal: the demo estate's load finishes first; another signal exits at once",
                 extra={"event": "shutdown"})
        _exit_on_a_second_signal(request)
        await _first(loading, request.lost)
    if not loading.done():
        await cancel_and_wait(loading)
        log.info("the demo estate's load is abandoned: its Redis is lost", extra={"event": "start_abandoned"})
        return await _shut_down(config, service, request)
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
    print("\n".join(banner), flush=True)
    log.info("ready: gRPC on %s, metrics %s", target, metrics, extra={  # the banner's line, for a log pipeline
        "event": "ready", "grpc": target, "metrics_port": service.metrics_port if config.metrics_port >= 0 else None})


def _exit_on_a_second_signal(request: _StopRequest) -> None:
    """From now on a stop signal exits at once (``kill_softly`` for the embedded Redis, then exit
    130) — one sent after a pause: a supervisor and the process group often deliver the same stop twice."""
    first_signal = time.monotonic()

    def exit_now() -> None:
        if time.monotonic() - first_signal < SECOND_SIGNAL_AFTER_S:
            return
        log.warning("second signal: exiting without the final snapshot", extra={"event": "hard_exit"})
        if request.on_hard_exit is not None:
            request.on_hard_exit()
        os._exit(130)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, exit_now)


async def _shut_down(config: ServiceConfig, service: AtpService, request: _StopRequest) -> int:
    """The graceful stop (a second signal, sent after a pause, exits at once); the exit status."""
    log.info("shutting down (grace %.1fs); another signal after %.0fs exits at once", config.shutdown_grace_s,
             SECOND_SIGNAL_AFTER_S, extra={"event": "shutdown", "grace_s": config.shutdown_grace_s})
    _exit_on_a_second_signal(request)
    # At least a second: a bound of 0 would cancel the stop before its first step (gRPC left serving).
    bound_s = max(1.0, config.shutdown_grace_s + (0.0 if request.redis_gone else SHUTDOWN_SNAPSHOT_S))
    overran = failed_steps = False
    try:
        # Everything acknowledged is already durable: the final snapshot only shortens the next start.
        await asyncio.wait_for(service.stop(), timeout=bound_s)
    except StopFailed:  # each step's failure said (``stop_step_failed``); every other step ran
        failed_steps = True
    except TimeoutError:
        if request.redis_gone:  # expected: the exit status is the lost Redis's (5)
            log.warning("stop cut short after %.1fs: Redis is gone, so nothing in doubt can be settled and no "
                        "snapshot written (what was acknowledged is in its log)", bound_s,
                        extra={"event": "shutdown_overran"})
        else:
            overran = True
            log.error("shutdown did not finish in %.1fs; exiting anyway (state is in the log), exit status %d",
                      bound_s, EXIT_STOP_OVERRAN, extra={"event": "shutdown_overran", "bound_s": bound_s})
            _dump_tasks()
    # Why the service stopped (a newer claim, a failed shard) says more than how its stop went.
    if service.replaced.is_set() or service.failed.is_set():
        return EXIT_REPLACED if service.replaced.is_set() else EXIT_SHARD_FAILED
    return EXIT_STOP_OVERRAN if overran else 1 if failed_steps else 0


def _dump_tasks() -> None:
    log.warning("asyncio tasks:\n%s", task_stacks())


if __name__ == "__main__":
    sys.exit(main())
