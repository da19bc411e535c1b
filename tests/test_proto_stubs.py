"""The committed stubs in client/atp_client/pb must be exactly what proto/ generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_committed_stubs_match_proto(project_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", project_root / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed = project_root / "client" / "atp_client" / "pb"
    for path in fresh:
        rel = path.relative_to(tmp_path)
        assert (committed / rel).read_text() == path.read_text(), f"{rel} is stale: run `make proto`"
