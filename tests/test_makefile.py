"""What `make run` sets up on a fresh machine (README, "Two commands"): the venv and redis-server,
not the tools only the tests of deploy/ use."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parent.parent


def planned(target: str) -> str:
    """The commands `make TARGET` would run (`make -n` prints even the silent ones, runs none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    done = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(ROOT), target],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "cluster", "bench", "soak"])
def test_running_the_service_installs_no_tool_of_the_deploy_tests(target: str) -> None:
    """`make run` installed Debian's prometheus (promtool) and docker-compose where they were missing:
    minutes more on a first start, and, on a host with systemd, a Prometheus server left running."""
    plan = planned(target)
    assert "redis-server" in plan  # what the service needs is still set up
    assert "promtool" not in plan and "docker" not in plan, plan


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_test_suite_still_installs_the_tools_of_the_deploy_tests() -> None:
    plan = planned("test")
    assert "promtool" in plan and "docker-compose" in plan, plan


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
SIM_PART = re.compile(r"`python -m tests\.sim ([^`]*)`,? the (\w+) parts? of `make sim`")
COUNTS = {"--seeds", "--first", "--processes"}  # how much and how many: the prose says so beside the command


def sim_parts(makefile: str) -> list[str]:
    """The arguments of each `python -m tests.sim` line of the `sim:` recipe, in order."""
    recipe = makefile.split("\nsim:", 1)[1].split("\n\n", 1)[0]
    return [line.split("-m tests.sim", 1)[1] for line in recipe.splitlines() if "-m tests.sim" in line]


def flags(arguments: str) -> set[str]:
    words = arguments.split()
    return {word for i, word in enumerate(words)
            if word.startswith("--") and word not in COUNTS and (i == 0 or words[i - 1] not in COUNTS)}


def misnamed_sim_parts(readme: str, makefile: str) -> list[str]:
    """README's "`python -m tests.sim ...`, the fourth part of `make sim`" whose part runs other flags."""
    parts = sim_parts(makefile)
    wrong = []
    for command, ordinal in SIM_PART.findall(readme):
        index = len(parts) - 1 if ordinal == "last" else ORDINALS.index(ordinal)
        if index >= len(parts) or flags(parts[index]) != flags(command):
            wrong.append(f"{command!r} is not the {ordinal} part of `make sim`")
    return wrong


def test_each_part_of_make_sim_the_fault_checks_name_runs_what_they_say() -> None:
    """The fault checks' table (RESULTS.md, which README links) names parts of ``make sim`` by their place."""
    results, makefile = (ROOT / "benchmarks" / "RESULTS.md").read_text(), (ROOT / "Makefile").read_text()
    assert len(SIM_PART.findall(results)) >= 5
    assert not misnamed_sim_parts(results, makefile)


def test_a_part_of_make_sim_moved_is_told() -> None:
    makefile = ("x:\n\techo\n\nsim: $(STAMP)\n\tpython -m tests.sim --seeds $(SEEDS)\n"
                "\tpython -m tests.sim --seeds $(SEEDS) --processes 3 --shed\n"
                "\tpython -m tests.sim --seeds $(SEEDS) --x\n\n")
    readme = ("`python -m tests.sim --seeds 5 --shed`, the second part of `make sim`; "
              "`python -m tests.sim --seeds 9 --first 3 --shed`, the last part of `make sim`")
    assert misnamed_sim_parts(readme, makefile) == ["'--seeds 9 --first 3 --shed' is not the last part of `make sim`"]


# Stands in for `python -m atp_service.storage.embedded_cluster --serve` (only the recipe's shell is tested here):
# it notes its data directory, writes in it as the nodes do, and, on Ctrl-C's SIGINT, exits 0 as the script does.
CLUSTER_STAND_IN = """\
import pathlib, signal, sys, threading
data = pathlib.Path(sys.argv[sys.argv.index("--data-dir") + 1])
(data / "node-0").mkdir()
(data / "node-0" / "appendonly.aof").write_text("written")
stopped = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stopped.set())
pathlib.Path(sys.argv[0]).with_name("data-dir").write_text(str(data))
stopped.wait(60)
sys.exit(0)
"""


def _cluster_stopped_by_ctrl_c(tmp_path: Path, *variables: str) -> tuple[Path, str]:
    """`make cluster` run with the stand-in as its python, sent SIGINT (Ctrl-C: the terminal's whole foreground
    process group) once its data directory is written; that directory, and what make printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!{sys.executable}\n{CLUSTER_STAND_IN}")
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "cluster",
                             f"BIN={bin_dir}", *variables], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        noted = bin_dir / "data-dir"
        for _ in range(600):  # a bound (60 s), not a timing: the stand-in writes it as soon as it starts
            if noted.exists() or make.poll() is not None:
                break
            time.sleep(0.1)
        assert noted.exists(), make.communicate()[0]
        data = Path(noted.read_text())
        assert (data / "node-0" / "appendonly.aof").exists()
        os.killpg(make.pid, signal.SIGINT)
        out, _ = make.communicate(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    return data, out.decode()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_cluster_removes_its_data_directory_after_ctrl_c(tmp_path: Path) -> None:
    """`make cluster` left its `/tmp/atp-cluster.XXXXXX` (every node's AOF) behind at each Ctrl-C."""
    data, out = _cluster_stopped_by_ctrl_c(tmp_path)
    assert not data.exists(), out


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_cluster_keeps_its_data_directory_when_asked(tmp_path: Path) -> None:
    data, out = _cluster_stopped_by_ctrl_c(tmp_path, "KEEP_DATA=1")
    try:
        assert (data / "node-0" / "appendonly.aof").read_text() == "written"
        assert f"kept: {data}" in out, out
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_the_longest_files_handed_out_first_are_files_of_the_suite_and_xdist_keeps_that_order() -> None:
    """A file renamed away from ``LONGEST_FIRST`` would silently go back among the last handed out; xdist's own
    reordering (most tests first) would undo the order."""
    assert [path for path in LONGEST_FIRST if not (ROOT / path).is_file()] == []
    if shutil.which("make") is not None:
        assert "--dist loadfile --no-loadscope-reorder" in planned("test")
