"""The alternatives a retailer weighs against this service, implemented the way their users would.

- ``CHECK_AND_DECREMENT``: the classic Redis Lua script, one call per reservation line: take the
  units only if the position has them, atomically (a script runs alone in Redis).
- ``lua-grpc``: that script behind a gRPC server with this service's ``Reserve`` shape
  (grpc.aio + uvloop, a pooled asyncio Redis client), for the OMS that wants an API in between.
- ``Postgres``: a private cluster (``initdb`` + ``pg_ctl`` from Debian's packages, run as the
  ``postgres`` user when started as root) with one row per position and
  ``UPDATE … SET qty = qty - $1 WHERE … AND qty >= $1``.

    python benchmarks/peers.py lua-grpc --port 50099 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc

# KEYS[1]: the position's stock key; ARGV[1]: units. 1 = taken, 0 = not enough.
CHECK_AND_DECREMENT = """
local have = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if have >= want then
  redis.call('DECRBY', KEYS[1], want)
  return 1
end
return 0
"""


def stock_key(sku: str, location: str) -> str:
    return f"stock:{sku}:{location}"


class LuaServicer(pb_grpc.AvailabilityServiceServicer):
    """All-or-nothing like the service would need a multi-key script; the benchmark sends one line."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.script = client.register_script(CHECK_AND_DECREMENT)

    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        out = pb.ReserveResponse(reservation_id=request.reservation_id)
        granted_any = False
        for line in request.lines:
            ok = await self.script(keys=[stock_key(line.sku, line.location)], args=[line.quantity])
            out.lines.add(sku=line.sku, location=line.location, requested=line.quantity,
                          granted=line.quantity if ok else 0,
                          outcome=pb.LINE_OUTCOME_GRANTED if ok else pb.LINE_OUTCOME_INSUFFICIENT)
            granted_any = granted_any or bool(ok)
        out.state = pb.RESERVATION_STATE_HELD if granted_any else pb.RESERVATION_STATE_REJECTED
        return out


async def serve_lua(port: int, redis_url: str) -> None:
    import uvloop

    uvloop.install()
    client = aioredis.Redis.from_url(redis_url, max_connections=128)
    server = grpc.aio.server()
    pb_grpc.add_AvailabilityServiceServicer_to_server(LuaServicer(client), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


class Postgres:
    """A throwaway cluster on a free port; ``available`` says why not when the binaries are missing."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.bin = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
        self.proc: subprocess.Popen[bytes] | None = None

    def unavailable(self) -> str | None:
        if self.bin is None or not (self.bin / "initdb").exists():
            return "postgresql is not installed (apt-get install postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no postgres user to run the cluster as"
        return None

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self, synchronous_commit: str) -> str:
        assert self.bin is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            for parent in self.data_dir.parents:  # the postgres user must reach its directory
                if parent == Path(tempfile.gettempdir()) or parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(self.data_dir), "-A", "trust",
                                      "-U", "bench"), check=True, capture_output=True)
        options = (f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=on "
                   f"-c synchronous_commit={synchronous_commit} -c max_connections=200 -c shared_buffers=256MB")
        self.proc = subprocess.Popen(self._as_owner(str(self.bin / "postgres"), "-D", str(self.data_dir),
                                                    *options.split()),
                                     stdout=subprocess.DEVNULL, stderr=(self.data_dir.parent / "pg.log").open("wb"))
        deadline = time.monotonic() + 120  # a busy machine (a test run beside) can take a minute
        while subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                why = "not ready in 120 s" if self.proc.poll() is None else f"exited {self.proc.returncode}"
                raise RuntimeError(f"postgres did not start ({why}); see {self.data_dir.parent / 'pg.log'}")
            time.sleep(0.1)
        return f"postgresql://bench@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=("lua-grpc",))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    asyncio.run(serve_lua(args.port, args.redis_url))
