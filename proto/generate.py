"""Generate the Python gRPC stubs from ``proto/`` into ``client/atp_client/pb/``.

The stubs are committed so that an installed wheel needs no ``grpcio-tools``;
``tests/test_proto_stubs.py`` regenerates them into a temporary folder and
fails when the committed copy has drifted from ``proto/``.

Usage: ``python proto/generate.py [OUT_DIR]`` (default: ``client/atp_client/pb``), or ``make proto``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "client" / "atp_client" / "pb"
PACKAGE = "atp_client.pb"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every ``.proto`` and rewrite imports to the package path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    googleapis = Path(status_pb2.__file__).parents[2]  # google/rpc/status.proto (googleapis-common-protos)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"-I{googleapis}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    written = sorted(p for p in out_dir.rglob("*.py*") if p.suffix in (".py", ".pyi"))
    for path in written:
        text = path.read_text()
        # protoc emits imports relative to the include root (``from atp.v1 import``);
        # make them absolute inside this package so no sys.path tweak is needed.
        fixed = re.sub(r"^from atp\.v1 import", f"from {PACKAGE}.atp.v1 import", text, flags=re.M)
        path.write_text(fixed)
    for pkg in {p.parent for p in written}:
        init = pkg / "__init__.py"
        while not init.exists() and out_dir in init.parents:
            init.write_text("")
            init = init.parent.parent / "__init__.py"
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for p in generate(target):
        print(p)
