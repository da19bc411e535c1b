"""``make cluster`` (``embedded_cluster --serve``) reads ATP_HOST, ATP_PORT and ATP_METRICS_PORT to place the
service processes it starts: as the service reads them. No Redis needed: the children are stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.storage import embedded_cluster, embedded_redis


class _Child:
    """A service process that is never started: the environment it was given."""

    envs: list[dict[str, str]] = []

    def __init__(self, _command: list[str], env: dict[str, str]) -> None:
        self.pid = 4242
        self.envs.append(env)


def started(monkeypatch: pytest.MonkeyPatch, processes: int, **env: str) -> list[tuple[str, str, str]]:
    """(ATP_PORT, ATP_METRICS_PORT, ATP_ADVERTISE_ADDRESS) of each process ``_serve`` starts under ``env``."""
    for name in ("ATP_HOST", "ATP_PORT", "ATP_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(embedded_cluster.subprocess, "Popen", _Child)
    _Child.envs.clear()
    embedded_cluster._serve("redis://127.0.0.1:1", processes)
    return [(e["ATP_PORT"], e["ATP_METRICS_PORT"], e["ATP_ADVERTISE_ADDRESS"]) for e in _Child.envs]


def test_a_metrics_port_0_is_a_free_port_for_each_process_as_the_service_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ATP_METRICS_PORT=0 is a free port to the service; counted on as a first port, the second process was told
    port 1 and the third port 2 (refused to a user, a privileged port taken by root), its start failing for a
    setting nobody gave it. Each is told 0; -1 stays off, a number counts on."""
    assert [m for _, m, _ in started(monkeypatch, 3, ATP_METRICS_PORT="0")] == ["0", "0", "0"]
    assert [m for _, m, _ in started(monkeypatch, 2, ATP_METRICS_PORT="-1")] == ["-1", "-1"]
    assert started(monkeypatch, 2, ATP_PORT="7000", ATP_METRICS_PORT="9000") == [
        ("7000", "9000", "127.0.0.1:7000"), ("7001", "9001", "127.0.0.1:7001")]


@pytest.mark.parametrize(("env", "said"), [
    ({"ATP_PORT": ""}, "ATP_PORT: cannot read '' as int"),
    ({"ATP_METRICS_PORT": "x"}, "ATP_METRICS_PORT: cannot read 'x' as int"),
    ({"ATP_PORT": "0"}, "ATP_PORT: 2 processes listen on consecutive ports from it, within [1, 65535], got 0"),
    ({"ATP_METRICS_PORT": "65535"}, "ATP_METRICS_PORT: 2 processes listen on consecutive ports from it"),
    ({"ATP_METRICS_PORT": "-2"}, "ATP_METRICS_PORT: must be within [-1, 65535], got -2"),
    ({"ATP_PORT": "70000"}, "ATP_PORT: must be within [0, 65535], got 70000"),
])
def test_a_port_variable_that_places_no_process_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                     env: dict[str, str], said: str) -> None:
    """An empty ATP_PORT ended in int()'s traceback ('invalid literal'), naming no variable; ATP_PORT=0 (a free port
    to the service, which a leased process cannot advertise) started processes at ports 0, 1, ...; a metrics port
    past 65535; one below -1, which the service refuses, was given to each process once the cluster ran. Each is
    refused naming the variable, as the service would, before any node starts."""
    with pytest.raises(ValueError) as refused:
        started(monkeypatch, 2, **env)
    assert str(refused.value).startswith(said)


def test_the_checks_run_before_any_node_starts(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ATP_PORT", "0")
    monkeypatch.setattr("sys.argv", ["embedded_cluster", "--data-dir", "unused", "--serve", "--processes", "2"])
    monkeypatch.setattr(embedded_cluster, "EmbeddedCluster", None)  # a node started would fail on it
    with pytest.raises(SystemExit) as stopped:
        embedded_cluster.main()
    assert stopped.value.code == 2
    assert "ATP_PORT: 2 processes listen on consecutive ports" in capsys.readouterr().err


def test_a_port_the_service_refuses_is_refused_before_any_node_starts_for_one_process_too() -> None:
    """One service process: its ports as given (0 a free one), a value the service refuses refused at once."""
    with pytest.raises(ValueError, match=r"^ATP_METRICS_PORT: must be within \[-1, 65535\], got -2$"):
        embedded_cluster.served_ports({"ATP_METRICS_PORT": "-2"}, 1)
    assert embedded_cluster.served_ports({"ATP_PORT": "0", "ATP_METRICS_PORT": "-1"}, 1) == [("127.0.0.1:0", 0, -1)]


def test_a_node_drawing_another_node_s_port_is_made_again_and_the_cluster_forms(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every node's ports are picked before any node binds one, so two nodes may draw the same (a busy host handing
    a freed port out again). The second, refused "Address already in use", is made again on fresh ports — and took
    the first node's cluster bus port away with it (kept by port): the meeting failed ``KeyError`` on the first
    node's port, and a test's whole cluster with it."""
    real = embedded_redis.free_port
    drawn: list[int] = []

    def the_first_nodes_port_again() -> int:  # p0's bus, p0, p1's bus, then p1 given p0's port
        drawn.append(drawn[1] if len(drawn) == 3 else real())
        return drawn[-1]

    monkeypatch.setattr(embedded_cluster, "free_port", the_first_nodes_port_again)
    with embedded_cluster.EmbeddedCluster(tmp_path / "c", primaries=2) as cluster:
        assert cluster.primaries[1].port != cluster.primaries[0].port == drawn[1]
        assert len({node.port for node in cluster.nodes}) == 2
