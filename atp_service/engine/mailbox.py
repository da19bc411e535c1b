"""A shard actor's mailbox: a bounded FIFO with one reader (the actor), leaner than ``asyncio.Queue``.

Why not ``asyncio.Queue``: counting the Python bytecodes sequential unary Reserves run (a per-opcode
``sys.settrace``; ±3% run to run), ~4,650 a call, put ~330 in ``asyncio/queues.py`` plus ~40
in ``_get_loop`` and ``Event.clear``: ``put_nowait`` keeps ``join()``'s count and Event and wakes
getters through ``_wakeup_next``, ``get`` finds its loop through a mixin, ``full`` calls ``qsize``.
Here a message costs a length check, an append and, when the reader waits, one wake-up: ~150
bytecodes a call in this module, ~4,400 in all. The actor never used ``task_done``/``join``.

Semantics are ``asyncio.Queue``'s for all the actor relies on: FIFO; at most ``bound`` items; a
``put`` waits for room, and each item taken wakes the oldest waiting putter; ``put_nowait`` may
overtake a putter that was woken but has not run yet (it then waits again, at the back, as in
``asyncio.Queue``). Both waits are cancel-safe (R8): a cancelled ``put`` either put its item or
did not, and hands a wake-up it got but cannot use to the next putter; a cancelled ``get`` takes
nothing, so an item put meanwhile stays for the next turn (or for ``drain``).

One reader: only the actor task calls ``get`` (asserted); anyone on the loop may put.
"""

from __future__ import annotations

from asyncio import AbstractEventLoop, Future, get_running_loop
from collections import deque
from contextlib import suppress
from typing import Generic, TypeVar

from atp_service.tasks import wake_oldest

T = TypeVar("T")


class MailboxFull(Exception):
    """``put_nowait`` on a full mailbox: the caller sheds the message (ResourceExhausted)."""


class MailboxEmpty(Exception):
    """``get_nowait`` on an empty mailbox."""


class Mailbox(Generic[T]):
    """A bounded FIFO of ``T``, read by one task and written by any on the same event loop."""

    __slots__ = ("_bound", "_getter", "_items", "_loop", "_putters")

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError(f"a mailbox holds at least one message, not {bound}")  # bounded everything
        self._items: deque[T] = deque()
        self._bound = bound
        self._getter: Future[None] | None = None  # the reader's wait for an item, while it waits
        self._putters: deque[Future[None]] = deque()  # putters waiting for room, oldest first
        self._loop: AbstractEventLoop | None = None  # the reader's, once it first waited

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Mailbox {len(self._items)}/{self._bound}, {len(self._putters)} putters waiting>"

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._bound

    def put_nowait(self, item: T) -> None:
        """Append ``item``, or raise MailboxFull; wakes the reader if it waits. The hot path: one
        message per call, so no ``join()`` bookkeeping and no loop over waiting getters."""
        items = self._items
        if len(items) >= self._bound:
            raise MailboxFull
        items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():  # done: woken already, or being cancelled
            getter.set_result(None)

    async def put(self, item: T) -> None:
        """Append ``item`` once there is room, waiting behind earlier putters' wake-ups.
        Cancelled, it put nothing, and a wake-up it received goes to the next putter."""
        while len(self._items) >= self._bound:
            putter: Future[None] = get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                self._leave(putter)
                raise
        self.put_nowait(item)

    def _leave(self, putter: Future[None]) -> None:
        """A waiting putter gives up: out of the line if it was still in it; if it was woken
        (an item was taken for it), the next putter gets that wake-up instead — else a putter
        could wait while there is room."""
        putter.cancel()  # a no-op if it was woken
        if putter.cancelled():
            with suppress(ValueError):  # ValueError: a wake-up skipped it (and dropped it) already
                self._putters.remove(putter)
        elif len(self._items) < self._bound:
            self._wake_putter()

    async def get(self) -> T:
        """The oldest item, waiting for one. Only the actor calls it (one reader). Cancelled while
        waiting, it takes nothing: an item put meanwhile stays first in the mailbox."""
        items = self._items
        while not items:
            assert self._getter is None, "a mailbox has one reader"
            getter = self._getter = (self._loop or self._reader_loop()).create_future()
            try:
                await getter
            finally:
                self._getter = None
        item = items.popleft()
        if self._putters:
            self._wake_putter()
        return item

    def _reader_loop(self) -> AbstractEventLoop:
        """The reader's event loop, asked for once: in Python 3.11 each ``get_running_loop`` makes a
        ``getpid`` system call (its check for a fork), and the reader waits once per message."""
        loop = self._loop = get_running_loop()
        return loop

    def get_nowait(self) -> T:
        """The oldest item, or MailboxEmpty. Wakes the oldest waiting putter: there is room now."""
        try:
            item = self._items.popleft()
        except IndexError:
            raise MailboxEmpty from None
        if self._putters:
            self._wake_putter()
        return item

    def drain(self) -> list[T]:
        """Every item, oldest first; the mailbox is empty afterwards, and as many waiting putters
        as there were items are woken (each freed slot wakes one, as ``get_nowait`` does)."""
        taken = list(self._items)
        self._items.clear()
        for _ in range(min(len(taken), len(self._putters))):
            self._wake_putter()
        return taken

    def refuse_putters(self, error: BaseException) -> None:
        """Every putter still waiting for room answered ``error``, nothing of it put: the reader stopped (or cannot
        take their items now). ``drain`` wakes only as many as it freed slots; past those, a putter waited for a
        slot no reader would ever free (a change across shards in ``ShardActor.pause``, for ever)."""
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_exception(error)

    def _wake_putter(self) -> None:
        """Wake the oldest putter still waiting; drop those cancelled on the way."""
        wake_oldest(self._putters)
