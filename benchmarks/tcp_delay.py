"""A TCP proxy that holds bytes back on demand: a slow network or a stalled peer, switched at run time.

    python benchmarks/tcp_delay.py --upstream 127.0.0.1:6379 [--listen-port 0]

It prints ``listening <port>``, then takes commands on stdin, one per line, and answers each with
``ok <command>`` once it is in force:

    delay <seconds> <up|down|both>   bytes read from now on wait this long before they are passed on
    clear                            bytes read from now on pass at once (held ones keep their turn)
    cut                              every open connection is reset: the next chunk back to the client
                                     passes only its first half (a reply cut short), then both sides
                                     are aborted; one that carries nothing back within CUT_WAIT_S is
                                     aborted then. A command Redis read before the reset still runs

``up`` is client -> upstream: a command reaches the server after the client's timeout gave up on
it, so it lands late. ``down`` is upstream -> client: the command landed, its reply comes late.
Bytes keep their order in each direction, and a side that closes is passed on only after what was
read before it: a command sent just before the client hung up still reaches the server, late.
``DelayProxyProcess`` runs it as a child process (its own interpreter: the proxy's timing does not
depend on how busy the caller's event loop is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

CHUNK = 64 * 1024
HELD_CHUNKS = 256
"""Chunks one direction of one connection may hold; past it the reading side waits (backpressure)."""
WRITE_TIMEOUT_S = 30.0
"""A peer that takes no bytes for this long is gone: the connection is dropped."""
CONNECT_TIMEOUT_S = 5.0
CUT_WAIT_S = 0.2
"""How long a ``cut`` waits for a reply to cut short before it resets an idle connection."""
DIRECTIONS = ("up", "down", "both")
SCRIPT = Path(__file__).resolve()


class DelayProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = {"up": 0.0, "down": 0.0}
        self.connections = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._open: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        """Each open connection: its client side -> its upstream side."""
        self._cutting: set[asyncio.StreamWriter] = set()
        """Client sides whose next chunk back passes half, then the connection is reset (``cut``)."""

    def set_delay(self, seconds: float, direction: str) -> None:
        if direction not in DIRECTIONS or seconds < 0:
            raise ValueError(f"delay: want seconds >= 0 and one of {DIRECTIONS}, got {seconds} {direction}")
        for side in ("up", "down"):
            if direction in (side, "both"):
                self.delay_s[side] = seconds

    def clear(self) -> None:
        self.delay_s = {"up": 0.0, "down": 0.0}

    def cut(self) -> None:
        """Reset every open connection (see the module's ``cut``): a lost connection, often mid-reply."""
        cutting = set(self._open)
        self._cutting |= cutting
        asyncio.get_running_loop().call_later(CUT_WAIT_S, self._abort_all, cutting)

    def _abort_all(self, writers: set[asyncio.StreamWriter]) -> None:
        for writer in writers:
            self._abort(writer)

    def _abort(self, writer: asyncio.StreamWriter) -> None:
        """Reset both sides of the connection of client side ``writer`` (an RST, not a FIN: buffers dropped)."""
        self._cutting.discard(writer)
        upstream = self._open.pop(writer, None)
        for side in (writer, upstream):
            if side is not None:
                side.transport.abort()

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._accept, host, port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Held by the set: the streams' callbacks alone keep no strong reference to the handler.
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.close()
            return
        self._open[writer] = up_writer
        try:
            await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))
        except asyncio.CancelledError:
            # The proxy is stopping. Python 3.11's stream server logs a cancelled handler as an
            # error (it asks the task for its exception): end quietly instead.
            pass
        finally:
            self._open.pop(writer, None)
            self._cutting.discard(writer)
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str) -> None:
        """Read until the peer closes; each chunk is released at its arrival time plus the delay then
        in force, never before the chunk ahead of it; the end is passed on last."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(HELD_CHUNKS)
        sender = asyncio.ensure_future(self._send(held, writer, self._cut_of(writer) if side == "down" else None))
        release = 0.0
        try:
            while chunk := await reader.read(CHUNK):
                release = max(release, loop.time() + self.delay_s[side])
                await held.put((release, chunk))
        except OSError:
            pass  # reset by the peer: the end, as a close would be
        finally:
            await held.put((max(release, loop.time()), b""))
            await sender

    def _cut_of(self, writer: asyncio.StreamWriter) -> Callable[[bytes], bool]:
        """For the way back to client side ``writer``: whether a chunk is to be cut short (then it is: its
        first half written, the connection reset)."""
        def cut_short(chunk: bytes) -> bool:
            if writer not in self._cutting:
                return False
            with contextlib.suppress(OSError):
                writer.write(chunk[:len(chunk) // 2])
            self._abort(writer)
            return True
        return cut_short

    @staticmethod
    async def _send(held: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter,
                    cut_short: Callable[[bytes], bool] | None = None) -> None:
        loop, broken = asyncio.get_running_loop(), False
        while True:
            release, chunk = await held.get()
            if not broken:
                await asyncio.sleep(max(0.0, release - loop.time()))
            if not chunk:
                if not broken and writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()  # half-close: the server still reads what came before
                return
            if broken:
                continue  # keep taking chunks so the reading side never blocks on a dead peer
            if cut_short is not None and cut_short(chunk):
                broken = True
                continue
            try:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            except (OSError, TimeoutError):
                broken = True


async def _commands(proxy: DelayProxy) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        words = line.split()
        try:
            if words[:1] == ["delay"] and len(words) == 3:
                proxy.set_delay(float(words[1]), words[2])
            elif words == ["clear"]:
                proxy.clear()
            elif words == ["cut"]:
                proxy.cut()
            else:
                raise ValueError(f"unknown command {line.strip()!r}")
            print("ok", *words, flush=True)
        except ValueError as exc:
            print("error", exc, flush=True)


async def _main(upstream: str, host: str, port: int) -> None:
    up_host, _, up_port = upstream.rpartition(":")
    proxy = DelayProxy(up_host, int(up_port))
    server = await proxy.serve(host, port)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await _commands(proxy)  # stdin closed: the parent is gone, so is the proxy
    server.close()
    await proxy.close()


class DelayProxyProcess:
    """``tcp_delay.py`` as a child process, driven through its stdin."""

    def __init__(self, upstream: str, log: Path) -> None:
        self.upstream, self.log = upstream, log
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one command and its answer at a time

    async def start(self, timeout_s: float = 30.0) -> int:
        with self.log.open("ab") as errors:  # the child keeps its own copy of the descriptor
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), "--upstream", self.upstream,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors)
        words = (await self._answer(timeout_s)).split()
        if words[:1] != ["listening"]:
            raise RuntimeError(f"tcp_delay.py did not start: {words}; see {self.log}")
        self.port = int(words[1])
        return self.port

    async def delay(self, seconds: float, direction: str) -> None:
        await self._command(f"delay {seconds:.3f} {direction}")

    async def clear(self) -> None:
        await self._command("clear")

    async def cut(self) -> None:
        await self._command("cut")

    async def _command(self, line: str, timeout_s: float = 10.0) -> None:
        async with self._lock:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(f"{line}\n".encode())
            await self._proc.stdin.drain()
            answer = await self._answer(timeout_s)
        if not answer.startswith("ok"):
            raise RuntimeError(f"tcp_delay.py refused {line!r}: {answer}")

    async def _answer(self, timeout_s: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        return (await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)).decode().strip()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0: a free port (printed)")
    args = parser.parse_args()
    asyncio.run(_main(args.upstream, args.listen_host, args.listen_port))


if __name__ == "__main__":
    main()
