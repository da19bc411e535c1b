"""Whether a Redis user's ACL allows the commands a program will send, asked without running them.

Each command, on the very keys it will be sent to, is queued inside ``MULTI`` and the transaction
discarded: Redis checks a queued command against the user's ACL — the command, its subcommand, each
key for reading or writing — before it queues it, and runs none of them. Any user may be asked so:
``ACL DRYRUN`` and ``ACL GETUSER`` need admin rights a program's user rarely has. The commands of Lua
scripts are checked against the caller's ACL as they run, so a program asks for them too, on the
keys its scripts touch, and for ``EVAL``/``EVALSHA`` with each script's keys. On a Redis Cluster
every primary is asked (ACLs are per node). A user that may not run ``MULTI`` is not asked (said in
a warning); nor is a Redis where ``MULTI`` opens no transaction (``rename-command``, a proxy): there
each command asked would run. Used by the service at start (``app/permissions.py``) and by each
channel publisher (``publishers/_permissions.py``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from atp_service.storage.nodes import Nodes, connect

log = logging.getLogger(__name__)
SHA = "0" * 40  # the digest EVALSHA is asked with: queued only, never run
G = "<n>"  # a shard group's number in the key patterns named


class AclRefused(Exception):
    """The Redis user may not run commands the program sends: each named with its keys and use."""


@dataclass(frozen=True, slots=True)
class Need:
    """One command a program sends: ``args`` as asked (real key names), ``pattern`` the key as
    named in the refusal (``{g<n>}`` for every group), ``group`` the shard group (None: no group)."""

    args: tuple[str | int, ...]
    pattern: str
    use: str
    group: int | None = None

    @property
    def command(self) -> str:
        words = 2 if self.args[0] in ("XINFO", "XGROUP", "SCRIPT", "CLUSTER") else 1
        return " ".join(str(a) for a in self.args[:words])


CLUSTER_CLIENT = [Need(("CLUSTER", "SLOTS"), "", "the cluster's slot map, read first (redis_cluster)"),
                  Need(("COMMAND",), "", "the command table: where each command's keys are (redis_cluster)"),
                  Need(("ASKING",), "", "a key of a slot migrating, read where it moved already (redis_cluster)")]
"""What redis-py's cluster client sends before any command: denied, it reads as no cluster there
("Cluster mode is not enabled"), taken for a Redis not up yet: asked first, of the node the URL names. And
``ASKING``, before a command of a key its slot's node answered ASK for (a reshard under way): denied, every
such command failed NOPERM for as long as the slot migrated."""


async def check_acl(nodes: Nodes, needs: list[Need], setting: str, who: str, else_: str,
                    transaction: str = "") -> None:
    """``AclRefused`` naming each command of ``needs`` the Redis user may not run, with its keys
    (``setting``: the setting that names the Redis; ``who``: "the service"; ``else_``: what a
    program started with such a user would do); on a cluster, each primary is asked. ``transaction``:
    what the program's own ``MULTI``/``EXEC`` are for ("": it sends none) — then either denied is
    refused, not just warned of, and ``EXEC`` is asked outside a transaction ("EXEC without MULTI"
    where it is allowed: nothing runs)."""
    probes: list[Any] = [("MULTI",), *(need.args for need in needs), ("DISCARD",)]
    missing: dict[tuple[str, str], set[int | None]] = defaultdict(set)
    said: dict[tuple[str, str], str] = {}
    if transaction:
        await _check_transaction(nodes, transaction, setting, who, else_)
    for where, opened in await nodes.on_each_primary([("MULTI",), ("DISCARD",)]):
        if not all(_ok(reply) for reply in opened):  # no transaction to hold them: the commands would run
            denied = [reply for reply in opened if _denied(reply)]
            why = (f"the Redis user may not run MULTI or DISCARD ({denied[0]})" if denied else
                   f"MULTI opens no transaction there (MULTI answered {_said(opened[0])}, DISCARD "
                   f"{_said(opened[1])}: renamed by rename-command, or a proxy)")
            log.warning("%s: %s, so the commands %s sends are not checked against its ACL at start: a "
                        "command denied fails when first sent", where, why, who)
            return
    for where, replies in await nodes.on_each_primary(probes):
        if not (_ok(replies[0]) and _ok(replies[-1])):  # answered OK a moment ago: in doubt, not started
            raise AclRefused(f"{setting}: {where} answered {_said(replies[0])} to MULTI and {_said(replies[-1])} "
                             "to DISCARD while the start asked what its ACL allows: the commands asked may have run")
        _note_denied(where, needs, replies[1:-1], missing, said)
    if missing:
        raise AclRefused(refusal(missing, said, needs, setting, who, else_))


async def check_cluster_client(url: str, timeout_s: float, setting: str, who: str, else_: str) -> None:
    """``AclRefused`` where the user may not run what the cluster client reads first (``CLUSTER_CLIENT``),
    asked of the node ``url`` names on a connection of its own, before any cluster client is made."""
    seed = Nodes(connect(url, timeout_s), url=url, timeout_s=timeout_s)
    try:
        await check_acl(seed, CLUSTER_CLIENT, setting, who, else_)
    finally:
        await seed.aclose()


async def _check_transaction(nodes: Nodes, use: str, setting: str, who: str, else_: str) -> None:
    """``AclRefused`` naming ``MULTI`` or ``EXEC`` where the user may not run them (``use``: what for)."""
    own = [Need((command,), "", use) for command in ("EXEC", "MULTI")]
    missing: dict[tuple[str, str], set[int | None]] = defaultdict(set)
    said: dict[tuple[str, str], str] = {}
    for where, replies in await nodes.on_each_primary([*(need.args for need in own), ("DISCARD",)]):
        _note_denied(where, own, replies[:len(own)], missing, said)
    if missing:
        raise AclRefused(refusal(missing, said, own, setting, who, else_))


def _note_denied(where: str, needs: list[Need], replies: list[Any], missing: dict[tuple[str, str], set[int | None]],
                 said: dict[tuple[str, str], str]) -> None:
    """Each of ``needs`` whose reply (in order) is an ACL refusal, noted by command and key pattern
    with its group in ``missing``, and the first refusal Redis gave for it (at ``where``) in ``said``."""
    for need, reply in zip(needs, replies, strict=True):
        if _denied(reply):
            missing[(need.command, need.pattern)].add(need.group)
            said.setdefault((need.command, need.pattern), f"{where}: {reply}")


def _ok(reply: Any) -> bool:
    """Whether ``reply`` is Redis's ``OK`` (``MULTI`` opened a transaction, ``DISCARD`` dropped it)."""
    return reply in (b"OK", "OK")


def _said(reply: Any) -> str:
    """A reply as a refusal names it: an error reply by its message."""
    return str(reply) if isinstance(reply, BaseException) else repr(reply)


def _denied(reply: Any) -> bool:
    """Whether ``reply`` is Redis's ACL refusal (redis-py: ``NoPermissionError``, the code taken off;
    an ``EXEC`` denied answers ``EXECABORT Transaction discarded because of: NOPERM ...``)."""
    if isinstance(reply, NoPermissionError):
        return True
    return isinstance(reply, ResponseError) and (str(reply).startswith("NOPERM") or "because of: NOPERM" in str(reply))


def refusal(missing: dict[tuple[str, str], set[int | None]], said: dict[tuple[str, str], str],
            needs: list[Need], setting: str, who: str, else_: str) -> str:
    """The start's refusal: each command denied, on which keys, what it is for, what Redis said."""
    uses = {(need.command, need.pattern): need.use for need in needs}
    lines = []
    for (command, pattern), groups in missing.items():
        on = f" on {pattern}" if pattern else ""
        if pattern.count(G):
            on = f" on {pattern.replace(G, '*')} (groups {_spans(sorted(g for g in groups if g is not None))})"
        lines.append(f"  {command}{on}: {uses[(command, pattern)]} — {said[(command, pattern)]}")
    return (f"{setting}: the Redis user may not run commands {who} sends (its ACL): {else_}, so it is not "
            "started. Grant each (ACL SETUSER <user> +<command> and the keys, or a user that has them):\n"
            + "\n".join(lines))


def _spans(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


__all__ = ["CLUSTER_CLIENT", "SHA", "AclRefused", "G", "Need", "check_acl", "check_cluster_client"]
