"""One simulated service process of several sharing a keyspace: its own real ``Engine`` (every shard
vacant until its group is taken), ``FactDesk`` and ``ProcessLog``, on the event loop all processes share.

A process is killed by cancelling every task it runs, wherever it is — so each task must be known to
be its: a task factory files every task under the process in whose context it was created
(``CURRENT``, a context variable that tasks inherit), and ``spawn`` starts work in a process's context.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from atp_service.engine.router import Engine
from atp_service.intake.facts import FactDesk
from reservation import Reason, Unavailable
from tests.sim.leased import ProcessLog

if TYPE_CHECKING:
    from tests.sim.membership import SimMembership

T = TypeVar("T")
CURRENT: contextvars.ContextVar[Process | None] = contextvars.ContextVar("sim_process", default=None)


def task_factory(loop: asyncio.AbstractEventLoop, coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
                 context: contextvars.Context | None = None) -> asyncio.Task[Any]:
    """Files each task under the process whose context created it (a dead one's new tasks end at once)."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    proc = context.get(CURRENT) if context is not None else CURRENT.get()
    if proc is not None:
        proc.tasks[task] = None
        task.add_done_callback(lambda done: proc.tasks.pop(done, None))
        if proc.dead:
            task.cancel()
    return task


class Process:
    def __init__(self, address: str, incarnation: int, log: ProcessLog, engine: Engine,
                 shard_settings: Any = None) -> None:
        self.address = address
        self.shard_settings = shard_settings
        """The settings of the shards it takes (its configuration's: each process its own)."""
        self.holder = f"{address}|{incarnation}"  # as a lease names it: a restarted process is another holder
        self.log, self.engine = log, engine
        self.facts = FactDesk(engine, "quarantine", 1000)
        self.membership: SimMembership | None = None
        self.tasks: dict[asyncio.Task[Any], None] = {}  # in creation order: a kill cancels them in it
        self.member = True
        """Registered among the live processes (a dead or long-paused one's entry timed out)."""
        self.entry = self.holder
        """Its entry among the members: the holder, or a new one once it registered anew."""
        self.failures: list[BaseException] = []
        """What background work of a live process raised (``background``): each is a finding."""

    @property
    def dead(self) -> bool:
        return self.log.dead

    @property
    def frozen(self) -> bool:
        return self.log.frozen

    @property
    def members(self) -> SimMembership:
        assert self.membership is not None
        return self.membership

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``coro`` as a task of this process."""
        ctx = contextvars.copy_context()
        ctx.run(CURRENT.set, self)
        return asyncio.get_running_loop().create_task(coro, context=ctx)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """``coro`` as a task of this process nobody awaits: whatever it raises while the process
        lives is kept in ``failures`` (the real service would log it at best)."""
        self.spawn(coro).add_done_callback(self._seen)

    def _seen(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None and not self.dead:
            self.failures.append(task.exception())  # type: ignore[arg-type]

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """A call reaching this process (a client's, forwarded, a peer's step): it waits while the
        process is paused, is refused by a dead one, and ends UNAVAILABLE when the process dies under
        it. A caller that gives up cancels the work, as gRPC cancels the handler."""
        await self.awake()
        task = self.spawn(_run(work))
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and me is not None and not me.cancelling():
                raise Unavailable(f"sim: process {self.address} died under the call", Reason.OUTCOME_UNKNOWN) from None
            raise

    async def awake(self) -> None:
        try:
            await self.log.awake()
        except ConnectionError:
            raise Unavailable(f"sim: process {self.address} does not answer (connection refused)",
                              Reason.STORAGE_UNREACHABLE) from None

    def kill(self) -> None:
        """kill -9: every task of the process ends wherever it is."""
        self.log.dead = True
        self.log.thaw()
        self.exit()

    def exit(self) -> None:
        """The process is gone: every task of it still running ends (but the one calling this)."""
        self.log.dead = True
        me = asyncio.current_task()
        for task in list(self.tasks):
            if task is not me:
                task.cancel()

    def busy(self) -> bool:
        """Work left in this process: a shard with messages, appends in flight or in doubt."""
        return any(a._inflight or a._doubt or not a._mailbox.empty() or a._set_aside for a in self.engine.actors)


async def _run(work: Callable[[], Awaitable[T]]) -> T:
    return await work()
