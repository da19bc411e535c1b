"""A Redis user of a test's own, allowed everything until the test takes a command out of its ACL while it is used
(``ACL SETUSER <user> -hset``), as an operator may while the service serves."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from atp_service.storage.log import connect


class AclUser:
    """The user's URL, and a connection of the default user that changes its ACL."""

    def __init__(self, url: str, admin: aioredis.Redis) -> None:
        self.url, self.admin = url, admin

    async def take_away(self, command: str) -> None:
        await self.admin.execute_command("ACL", "SETUSER", urlsplit(self.url).username, f"-{command}")

    async def give_back(self, command: str) -> None:
        await self.admin.execute_command("ACL", "SETUSER", urlsplit(self.url).username, f"+{command}")

    async def allow_only_on(self, command: str, *patterns: str) -> None:
        """``command`` taken away but on the keys of ``patterns`` (a selector: ``(+<command> ~<pattern> ...)``), as an
        operator narrowing it may while the service serves; the user's scripts still run (their keys are allowed)."""
        rule = " ".join((f"+{command}", *(f"~{pattern}" for pattern in patterns)))
        await self.admin.execute_command("ACL", "SETUSER", urlsplit(self.url).username, f"-{command}", f"({rule})")


@contextlib.asynccontextmanager
async def acl_user(redis_url: str) -> AsyncIterator[AclUser]:
    """A user of the Redis at ``redis_url`` allowed every command and key, deleted after."""
    name, password = f"svc-{secrets.token_hex(4)}", secrets.token_hex(8)
    admin = connect(redis_url, 5.0)
    await admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    parts = urlsplit(redis_url)
    try:
        yield AclUser(urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}")), admin)
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()
