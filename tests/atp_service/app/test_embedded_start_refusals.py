"""The embedded Redis's refusals at start name the setting as the operator gave it (``ATP_DATA_DIR`` or
``--data-dir``), as every other refusal of atp-service does (``config_settings.as_given``): they named the field
(``data_dir: ... give each its own --data-dir``), a flag the operator who set the variable never typed."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("given", "named"), [("env", "ATP_DATA_DIR"), ("flag", "--data-dir")])
def test_a_data_dir_in_use_is_refused_naming_it_as_given(tmp_path: Path, given: str, named: str) -> None:
    (tmp_path / "redis").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    flags = ["--data-dir", str(tmp_path)] if given == "flag" else []
    if given == "env":
        env["ATP_DATA_DIR"] = str(tmp_path)
    with (tmp_path / "redis" / "owner.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another service's embedded Redis holds it
        done = subprocess.run([sys.executable, "-m", "atp_service", "serve", "--no-demo", "--auth", "off", "--port",
                               "0", "--metrics-port", "-1", *flags],
                              env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert f"atp-service: {named}: {tmp_path / 'redis'} is in use by another running service" in done.stderr, \
        done.stderr
    assert f"give each its own {named}" in done.stderr and "data_dir" not in done.stderr.replace(str(tmp_path), ""), \
        done.stderr
