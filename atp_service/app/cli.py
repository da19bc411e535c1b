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
from collections.abc import Callable, Mapping

from atp_service import config_settings
from atp_service.app.allocator import set_mmap_threshold, set_numpy_hugepages
from atp_service.app.embedded_watch import EmbeddedRedisWatch, Watching
from atp_service.app.keyspace import StartupError
from atp_service.app.service import AtpService
from atp_service.app.serving import serve_until_stopped as _serve_until_stopped
from atp_service.app.settings import OUTPUT_FORMATS, add_setting_flags, check_retention, given_settings, print_config
from atp_service.app.shutdown import (
    EXIT_REDIS_FAILED,
    EXIT_REPLACED,
    EXIT_SHARD_FAILED,
    EXIT_STOP_OVERRAN,
    SECOND_SIGNAL_AFTER_S,
    SHUTDOWN_SNAPSHOT_S,
)
from atp_service.app.shutdown import (
    StopRequest as _StopRequest,
)
from atp_service.config import ServiceConfig
from atp_service.config_settings import as_given
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

__all__ = ["EXIT_REDIS_FAILED", "EXIT_REPLACED", "EXIT_SHARD_FAILED", "EXIT_STOP_OVERRAN", "SECOND_SIGNAL_AFTER_S",
           "SHUTDOWN_SNAPSHOT_S", "build_parser", "main", "serve"]

log = logging.getLogger("atp_service")


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
        # Every flag given wins, one read as unset too (``--estate ""``): ServiceConfig.resolve takes None for a
        # flag not given, and the variable's value stood instead.
        config, sources = config_settings.resolve(ServiceConfig, os.environ, given_settings(args))
        try:
            check_settings(config.limits, config.max_message_bytes)  # the answers' bound is the edge's
            check_retention(config.limits)  # the service's floor: the engine's Limits let tests go below it
        except ValueError as exc:  # its words name fields: the operator gave ATP_X or --x
            raise ValueError(as_given(str(exc), ServiceConfig, sources)) from None
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
    return serve(config, sources)


def serve(config: ServiceConfig, sources: Mapping[str, str] | None = None) -> int:
    """Run the service until it is stopped; the exit status (a refusal names each setting as ``sources`` gave it)."""
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
        except (RedisNotInstalled, DataDirInUse, RedisDidNotStart) as exc:  # named as given: ATP_X or --x
            print(f"atp-service: {as_given(str(exc), ServiceConfig, sources or {})}", file=sys.stderr)
            return 2
        redis_url = embedded.local_url  # the unix socket: less CPU per round trip than loopback TCP
        log.info("embedded redis-server on %s (AOF appendfsync=%s, data in %s)",
                 redacted(redis_url), config.durability, embedded.data_dir)
    try:
        # Every command and fact allocates a few short-lived objects, and recovery builds millions of
        # long-lived ones: collect young objects less often than CPython's default (700, 10, 10).
        gc.set_threshold(*config.gc_thresholds)
        status = asyncio.run(_serve(config, redis_url, on_hard_exit=embedded.kill_softly if embedded else None,
                                    stopped_early=early_stop.received, embedded=embedded, sources=sources))
    except StartupError as exc:  # its words name fields: the operator gave ATP_X or --x
        print(f"atp-service: {as_given(str(exc), ServiceConfig, sources or {})}", file=sys.stderr)
        return 2
    finally:
        # The loop's close gave SIGHUP (a reload) and SIGUSR1 their default action, which terminates (uvloop
        # drops them): ignored again, so one sent while Redis stops or the process exits leaves its status be.
        ignore_reloads()
        if embedded is not None:
            embedded.stop()
    return status


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
                 stopped_early: Callable[[], bool] = lambda: False, embedded: EmbeddedRedis | None = None,
                 sources: Mapping[str, str] | None = None) -> int:
    """Serve until a signal (exit status 0), a newer instance claims the keyspace (3), a shard
    stops working (4) or the embedded Redis keeps exiting (5); a signal's stop cut off at its bound:
    6. ``stopped_early``: a stop signal
    came before this took the signals over; ``embedded``: the Redis to watch and restart (its refusals naming each
    setting as ``sources`` gave it)."""
    service = AtpService(config, redis_url)
    request = _StopRequest(on_hard_exit)
    watching = None if embedded is None else Watching(EmbeddedRedisWatch(
        embedded, config.redis_restarts, config.redis_load_timeout_s, service.metrics.storage.redis_restarts, sources),
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


if __name__ == "__main__":
    sys.exit(main())

