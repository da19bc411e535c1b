"""The processes' own ``Peers/Step`` service (``edge.peers``)."""

from __future__ import annotations

import logging
import re
import typing
from pathlib import Path

import grpc
import msgspec
import pytest

from atp_service import AtpService
from atp_service.edge.forward import Forwarder
from atp_service.edge.peers import step_sender
from atp_service.engine import parts
from atp_service.engine.parts import STEP_METHOD
from atp_service.metrics import EdgeMetrics
from reservation import OrderStep, PendingOp, Reason, Unavailable
from tests.conftest import ServiceFactory
from tests.ports import held_port


async def test_a_step_that_is_not_one_of_this_version_is_refused_invalid_argument(
        start_service: ServiceFactory) -> None:
    """Bytes that do not decode as a step ended the call UNKNOWN with a traceback in the log, as a
    bug of the service would; they are the caller's fault (a peer of another version, or garbage)."""
    _, client = await start_service(ownership="leases", lease_ms=5_000, port=held_port(), host="127.0.0.1",
                                    input_streams=())  # the Peers service runs where processes share a keyspace
    step = client.channel.unary_unary(STEP_METHOD, None, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await step(b"\xff\x00 not a step", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an order step of this version" in str(refused.value.details())


async def test_a_step_a_newer_build_sent_with_a_field_more_is_refused_whole_not_run_without_it(
        start_service: ServiceFactory) -> None:
    """A rolling update: a newer process sends a reserve step whose command has a field this build
    does not know (msgpack arrays: one element more at the end). It was read as a prefix and the part
    reserved without it (a half-understood step, answered OK); it is refused whole, nothing applied."""
    import msgspec

    from reservation import LineRequest, ReserveCommand

    # A 5 s lease: a 2 s one, renewed every 0.67 s and answered for 1.6 s after, lets a busy host's
    # stall of ~1 s answer the read below GROUP_MOVED instead of NOT_FOUND.
    _, client = await start_service(ownership="leases", lease_ms=5_000, port=held_port(), host="127.0.0.1",
                                    input_streams=())
    cmd = msgspec.to_builtins(ReserveCommand("r-newer", "o-1", "web", (LineRequest("A", "DC", 1),), 60_000, False))
    request = msgspec.msgpack.encode([0, ["reserve", [*cmd, "a field of a newer build"]]])
    step = client.channel.unary_unary(STEP_METHOD, None, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await step(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an order step of this version" in str(refused.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await client.get_reservation("r-newer")
    assert absent.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_step_a_peer_cannot_read_is_logged_naming_the_peer(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """During a rolling update a peer of another version refuses a step it cannot read: the order
    stays undecided (retried later), and the log says why, naming the peer — once, not per retry."""
    service, _ = await start_service(ownership="leases", lease_ms=5_000, port=held_port(), host="127.0.0.1",
                                     input_streams=())
    told = await errors_of_three_steps(service, None, caplog)
    assert len(told) == 1 and "version" in told[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert (getattr(told[0], "event", None), getattr(told[0], "peer", None)) == (  # an operator's alert reads these
        "peer_step_unreadable", service._servicer.address)


async def errors_of_three_steps(service: AtpService, token: str | None,
                                 caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Three unreadable order steps sent to ``service`` with ``token``, each refused OUTCOME_UNKNOWN: the
    ERROR lines naming its address."""
    forwarder = Forwarder(EdgeMetrics())
    send = step_sender(forwarder, token)
    try:
        for _ in range(3):
            with pytest.raises(Unavailable) as refused:
                await send(service._servicer.address, msgspec_garbage())
            assert refused.value.reason == Reason.OUTCOME_UNKNOWN
    finally:
        await forwarder.aclose()
    return [r for r in caplog.records if r.levelname == "ERROR" and service._servicer.address in r.getMessage()]


def msgspec_garbage() -> bytes:
    """Bytes that are no order step of this version: an array of one unknown kind."""
    import msgspec

    return msgspec.msgpack.encode([0, ["a kind of a newer build", []]])


def test_a_step_is_said_by_its_kind_group_and_reservation() -> None:
    """What the line about a peer not answering names (``peer_step_failed``), for each kind of step."""
    share = parts.ApplyShare("o-1#2", PendingOp(OrderStep.CONFIRM))
    said = [parts.step_said(msgspec.msgpack.encode(parts.StepRequest(group, step))) for group, step in (
        (2, share), (3, parts.ReadPart("o-1#3")), (-1, parts.SettleOrder("o-1")), (-1, parts.ResolveOrder("o-2")))]
    assert said == [{"step": "share CONFIRM", "group": 2, "reservation_id": "o-1#2"},
                    {"step": "read", "group": 3, "reservation_id": "o-1#3"},
                    {"step": "settle", "group": -1, "reservation_id": "o-1"},
                    {"step": "resolve", "group": -1, "reservation_id": "o-2"}]


async def test_a_peer_refusing_the_token_of_steps_is_logged_once_not_per_step(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A peer whose callers file no longer holds this process's peer token (rotated at one process,
    reloaded there) refuses every order step UNAUTHENTICATED: each was said at ERROR, and housekeeping
    sends each pending order's step again every pass — a line per step, many a second, for as long as
    the tokens differ. Said once per peer in ``REFUSAL_LOG_S``, as a step it cannot read is."""
    from atp_service.edge.auth import new_token, token_hash
    callers, own = tmp_path / "callers.toml", new_token()
    callers.write_text(f'[[callers]]\nname = "peer"\nroles = ["peer"]\ntoken_sha256 = "{token_hash(own)}"\n')
    (tmp_path / "peer.token").write_text(own)
    service, _ = await start_service(ownership="leases", lease_ms=5_000, port=held_port(), host="127.0.0.1",
                                     input_streams=(), auth="on", callers_file=callers,
                                     peer_token_file=tmp_path / "peer.token")
    told = await errors_of_three_steps(service, new_token(), caplog)  # a token its callers file does not hold
    assert len(told) == 1 and "peer_token_file" in told[0].getMessage(), [r.getMessage() for r in caplog.records]


def test_every_kind_of_step_a_peer_may_not_answer_is_one_the_operations_guide_names() -> None:
    """``peer_step_failed``'s ``step`` is the step's tag (a share with its kind): the row of docs/OPERATIONS.md an
    operator reads it by names each. ``reserve-opened`` (an order decided again) was logged but not named there."""
    table = (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    row = next(line for line in table.splitlines() if line.startswith("| `peer_step_failed` |"))
    named = set(re.findall(r"`([a-z-]+)(?: [A-Z]+)?`", row.partition("(`step`:")[2].partition(";")[0]))
    tags = {kind.__struct_config__.tag for kind in typing.get_args(parts.PartStep)}
    assert tags - named == set(), f"step kinds peer_step_failed may say that its row does not name: {tags - named}"
