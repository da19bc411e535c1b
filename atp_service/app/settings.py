"""The settings on the command line: a flag for each (made from the same declaration as its
``ATP_*`` variable, with the field's docstring as help), and ``atp-service config``, which prints
every setting's effective value and where it came from."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from atp_service.config import ServiceConfig
from atp_service.config_settings import Setting, settings_of, shown
from atp_service.config_values import canonical, read_text, redacted
from reservation import Limits

OUTPUT_FORMATS = ("text", "json")
SECRET_URLS = ("redis_url",)
"""Settings whose value may carry a password: printed without it."""
METAVARS = {"int": "N", "float": "X", "Path": "PATH", "tuple": "A,B,..."}
MIN_RETENTION_MS = 10 * 60 * 1000
"""The least ``retention_ms`` ``atp-service`` starts with. A sixteenth of it is how far from the true time (UTC) any
host's clock may stray — so no two more than an eighth apart, a group's clock ahead of the host furthest behind by
under that (``GroupClock``) — that an order spanning groups whose id is used again allows, when it tells a part of
the order before it from its own by the part's age (R3: a part stamped by one group's clock is judged by another's
later, at least the retention less two such gaps old). 10 minutes: 37.5 seconds each way, 75 seconds between hosts,
75 times the second past which ``ATPProcessClocksDisagree`` fires. The engine's
``reservation.Limits`` holds no floor: tests and the simulation shorten the retention, their clocks moved to match."""


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--<name>`` flag for every setting; one that is not given leaves no attribute on the
    parsed arguments (its variable or default then stands)."""
    group = parser.add_argument_group("settings", "each is also an ATP_<NAME> variable; a flag wins over it")
    for setting in settings_of(ServiceConfig):
        common: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS, "help": _help(setting)}
        if setting.type_name == "bool":
            group.add_argument(setting.flag, action=argparse.BooleanOptionalAction, **common)
        else:
            group.add_argument(setting.flag, type=_reader(setting), choices=setting.choices,
                               metavar=_metavar(setting), **common)


def check_retention(limits: Limits) -> None:
    """Refuse (``ValueError`` naming the setting, its floor and why) a ``retention_ms`` under ``MIN_RETENTION_MS``."""
    if limits.retention_ms < MIN_RETENTION_MS:
        raise ValueError(f"retention_ms: must be at least {MIN_RETENTION_MS} ({MIN_RETENTION_MS // 60_000} minutes), "
                         f"got {limits.retention_ms}: a sixteenth of it is how far from the true time a host's clock "
                         "may stray where an order whose id is used again tells another order's parts (R3)")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, by name."""
    return {s.name: getattr(args, s.name) for s in settings_of(ServiceConfig) if hasattr(args, s.name)}


def _help(setting: Setting) -> str:
    doc = setting.doc.replace("``", "").replace("%", "%%")  # argparse formats help with %
    return f"{doc} (env {setting.env}; default {shown(setting.default)})"


def _metavar(setting: Setting) -> str | None:
    if setting.choices:
        return None  # argparse shows the choices
    return next((m for prefix, m in METAVARS.items() if setting.type_name.startswith(prefix)), "TEXT")


def _reader(setting: Setting) -> Callable[[str], Any]:
    def read(raw: str) -> Any:
        try:
            return canonical(setting.name, read_text(setting.type_name, raw))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return read


def print_config(config: ServiceConfig, sources: dict[str, str], output: str, out: IO[str] | None = None) -> None:
    """Every setting's value and source, as aligned text or as one JSON object by setting name."""
    out = out or sys.stdout
    rows = [(s.name, _value(config, s), sources[s.name]) for s in settings_of(ServiceConfig)]
    if output == "json":
        json.dump({name: {"value": _jsonable(value), "source": source} for name, value, source in rows}, out,
                  indent=2)
        out.write("\n")
        return
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(40, max(len(shown(value)) for _, value, _ in rows))
    for name, value, source in rows:
        out.write(f"{name:<{name_width}}  {shown(value):<{value_width}}  {source}\n")


def _value(config: ServiceConfig, setting: Setting) -> Any:
    value = getattr(getattr(config, setting.group) if setting.group else config, setting.name)
    return redacted(value) if setting.name in SECRET_URLS and value else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value
