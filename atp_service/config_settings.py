"""Every setting of the service under one name: an ``ATP_<NAME>`` variable and a ``--<name>`` flag
for each field of ``ServiceConfig`` and of the bounds it holds (``reservation.Limits``, flattened
into the same namespace), the field's docstring as its help, and where each value came from.

The fields are the one declaration: a setting added to either dataclass has its variable, its flag
and its help without a further line anywhere.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import itertools
import re
import textwrap
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from functools import cache
from typing import Any, TypeVar

from atp_service.config_values import CHOICES, parse_value

OTHER_TOOLS = (
    "ATP_TARGET", "ATP_TOKEN",  # atpctl and the load tests: where the service is, the bearer token
    "ATP_WEBHOOK_SECRET", "ATP_SHOPIFY_TOKEN",  # atp-publisher: the channels' credentials
    "ATP_SHOPIFY_API_VERSION",  # atp-publisher: the Shopify Admin API version it calls
    "ATP_SCENARIO", "ATP_DURATION", "ATP_PEAK_USERS", "ATP_RUN_ID", "ATP_STORE_SKUS",  # benchmarks (locust)
    "ATP_FLASH_STOCK", "ATP_FLASH_TTL_S", "ATP_WATCH_CHANNELS", "ATP_STREAM_USERS", "ATP_STREAM_BATCH",
    "ATP_TOKEN_FILE", "ATP_TLS_CA", "ATP_TLS_SERVER_NAME", "ATP_CLIENT_CERT", "ATP_CLIENT_KEY",  # a secured service
    "ATP_SIM_SEEDS", "ATP_SIM_MULTI_SEEDS", "ATP_SIM_LOSE_TAIL_SEEDS", "ATP_SIM_CLOCK_SKEW_SEEDS",  # the simulation
    "ATP_SIM_REDIS_FULL_SEEDS", "ATP_SIM_FACT_TIMES_SEEDS", "ATP_SIM_SHED_SEEDS", "ATP_SIM_SETTLE_FAULT_SEEDS",
    "ATP_SIM_GROUPS_SEEDS", "ATP_SIM_SHORT_GRACE_SEEDS", "ATP_SIM_INPUT_SEEDS", "ATP_SIM_PARTITION_SEEDS",
    "ATP_SIM_CLOCK_JUMPS_SEEDS", "ATP_SIM_SUSPENDS_SEEDS", "ATP_SIM_EVERY_FAULT_SEEDS",
    # The image's health check (python -m atp_service.app.healthcheck), in the service's environment:
    "ATP_HEALTH_SERVER_NAME", "ATP_HEALTH_TLS_CERT", "ATP_HEALTH_TLS_KEY",
    "ATP_PUBLISHER_ARGS",  # deploy/systemd's publisher unit: the adapter and its flags
)
"""``ATP_*`` variables that the project's other tools read: not settings of the service, and not
refused by it (an environment shared by the service and its tools is not a mistake)."""

Config = TypeVar("Config")


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: a field of the configuration, or of a group of fields it holds (``limits``)."""

    name: str
    type_name: str
    default: Any
    doc: str
    group: str | None
    choices: tuple[str, ...] | None

    @property
    def env(self) -> str:
        return f"ATP_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def flag_for(self, value: Any) -> str:
        """The flag that sets ``value``: ``--no-<name>`` for a boolean's false."""
        return f"--no-{self.flag[2:]}" if value is False else self.flag


def shown(value: Any) -> str:
    """A value as it would be written in its ``ATP_*`` variable (``unset`` for None)."""
    if value is None:
        return "unset"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written after each field of the class ``cls``, and of the dataclasses it extends
    (``ServiceConfig``'s first fields are ``ServingFields``'), its whitespace folded."""
    docs: dict[str, str] = {}
    for owner in reversed(cls.__mro__):
        if is_dataclass(owner):
            docs.update(_own_attribute_docs(owner))
    return docs


def _own_attribute_docs(cls: type) -> dict[str, str]:
    """``attribute_docs`` of the fields declared in ``cls`` itself."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # installed without its sources: every setting works, without help
        return {}
    tree = ast.parse(textwrap.dedent(source))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for stmt, after in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _group_type(f: Field[Any]) -> type | None:
    """The dataclass a field holds as a group of settings of its own (``limits: Limits``), if any."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and is_dataclass(factory) else None


def groups(cls: type) -> dict[str, type]:
    return {f.name: kind for f in fields(cls) if (kind := _group_type(f)) is not None}


def flat_names(cls: type) -> list[str]:
    """Every setting's name; raises if a group's field has the name of another setting (they share
    one namespace of variables and flags)."""
    names = [f.name for f in fields(cls) if f.name not in groups(cls)]
    for kind in groups(cls).values():
        names += [f.name for f in fields(kind)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"{cls.__name__}: settings named twice (one namespace of ATP_* and flags): {twice}")
    return names


@cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of the configuration class ``cls``, in declaration order."""
    flat_names(cls)
    out = []
    for f in fields(cls):
        kind = _group_type(f)
        if kind is None:
            out.append(_setting(cls, f, None))
        else:
            out += [_setting(kind, g, f.name) for g in fields(kind)]
    return tuple(out)


def _setting(owner: type, f: Field[Any], group: str | None) -> Setting:
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
    return Setting(f.name, str(f.type), default, attribute_docs(owner).get(f.name, ""), group,
                   CHOICES.get(f.name))


def unknown_variables(cls: type, env: Mapping[str, str]) -> list[str]:
    """One message per ``ATP_*`` variable that is neither a setting nor another tool's, with the
    nearest setting's variable (a typo is named, not silently ignored)."""
    names = sorted(s.env for s in settings_of(cls))
    messages = []
    for var in sorted(env):
        if var.startswith("ATP_") and var not in names and var not in OTHER_TOOLS:
            # Compared without the prefix every name shares, which would make anything look near.
            near = difflib.get_close_matches(var[4:], [name[4:] for name in names], n=1)
            hint = f"; did you mean ATP_{near[0]}?" if near else " (`atp-service serve --help` lists them)"
            messages.append(f"{var}: not a setting of atp-service{hint}")
    return messages


def resolve(cls: type[Config], env: Mapping[str, str], flags: Mapping[str, Any]) -> tuple[Config, dict[str, str]]:
    """The configuration of defaults, then ``ATP_*`` variables, then ``flags`` (values by setting
    name), and each setting's source: ``default``, ``env ATP_X`` or ``flag --x``."""
    kind: type = cls  # (hashable for the cache)
    if unknown := unknown_variables(kind, env):
        raise ValueError("\n".join(unknown))
    known = {s.name: s for s in settings_of(kind)}
    if stray := sorted(set(flags) - set(known)):
        raise ValueError(f"{', '.join(stray)}: not a setting of atp-service")
    values: dict[str, Any] = {}
    sources = {}
    for s in known.values():
        if s.name in flags:
            values[s.name], sources[s.name] = flags[s.name], f"flag {s.flag_for(flags[s.name])}"
        elif s.env in env:
            values[s.name], sources[s.name] = parse_value(s.name, s.type_name, env[s.env]), f"env {s.env}"
        else:
            sources[s.name] = "default"
    try:
        return _build(cls, values), sources
    except ValueError as exc:  # a check's words name fields: the operator gave ATP_X or --x
        raise ValueError(as_given(str(exc), kind, sources)) from None


_QUOTED = r"""(?<!\w)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
"""A value as ``repr`` quotes it in a message (not an apostrophe: ``process's``), in double quotes where it holds an
apostrophe (``"it's"``): left as it is, whatever setting's name it holds."""


def as_given(message: str, cls: type, sources: Mapping[str, str]) -> str:
    """``message`` of a check of the settings of ``cls``, which names them by field (``shards: must be within
    [1, 1024]``), with each setting named as the operator gives it: the flag where one was given, else the
    variable (``ATP_SHARDS: must be within [1, 1024]``). The settings it begins with are named whatever their
    names; those in its text, where a name is a field's alone (``under redis_timeout_s``): those with an ``_``."""
    known = {s.name: s for s in settings_of(cls)}

    def given(name: str) -> str:
        source = sources.get(name, "default")
        return source.removeprefix("flag ") if source.startswith("flag ") else known[name].env

    head, sep, rest = message.partition(": ")
    if head in groups(cls) and rest.partition(": ")[0] in known:  # "limits: max_ttl_seconds: ..."
        head, sep, rest = rest.partition(": ")
    if sep and all(part in known for part in re.split(r"/|, ", head)):
        head = re.sub(r"[a-z_0-9]+", lambda found: given(found.group()), head)
    else:
        head, sep, rest = "", "", message
    named = "|".join(sorted((name for name in known if "_" in name), key=len, reverse=True))
    # A name within a path (``/etc/atp/tls_key.pem``, ``callers_file.toml``) is the file's: a refusal that names
    # the file the operator gave named another, one never given (``/etc/atp/ATP_TLS_KEY.pem``).
    rest = re.sub(rf"{_QUOTED}|(?<![\w.:{{/-])({named})(?![\w/-]|\.\w)",
                  lambda found: given(found.group(1)) if found.group(1) else found.group(), rest)
    return head + sep + rest


def _build(cls: type[Config], values: dict[str, Any]) -> Config:
    own_fields = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    top = {name: value for name, value in values.items() if name in own_fields}
    for group, kind in groups(cls).items():
        own = {f.name: values[f.name] for f in fields(kind) if f.name in values}
        if own:
            top[group] = kind(**own)
    return cls(**top)
