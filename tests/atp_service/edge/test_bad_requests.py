"""Bytes that are not a valid request, and callers without a valid token, sent over real gRPC.

Malformed bytes answer INVALID_ARGUMENT naming the message type (not UNKNOWN with an ERROR traceback
per call); a caller who is not authenticated is refused before its bytes are parsed, whatever they
are, and nothing is written. Neither can flood the log: their lines are rate-limited, a metric
counts every call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge.auth import new_token, token_hash
from atp_service.edge.ratelog import RateLimitedLog
from atp_service.storage.keys import Keyspace
from tests.conftest import ServiceFactory

SERVICE = "/atp.v1.AvailabilityService/"
TRUNCATED = pb.ReserveRequest(reservation_id="r-bad", order_ref="o", lines=[pb.Line(sku="A", location="L",
                                                                                    quantity=1)]).SerializeToString()[:-3]
BAD_UTF8 = b"\x0a\x03r\xff\xfe"  # field 1 (reservation_id), a string that is not UTF-8
GARBAGE = (TRUNCATED, BAD_UTF8)


def raw_unary(client: AtpClient, path: str) -> grpc.aio.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
    """Bytes in, bytes out: no serializer on either side."""
    return client.channel.unary_unary(path, None, None)


def raw_unary_stream(client: AtpClient, path: str) -> grpc.aio.UnaryStreamMultiCallable:  # type: ignore[type-arg]
    return client.channel.unary_stream(path, None, None)


def raw_stream(client: AtpClient, path: str) -> grpc.aio.StreamStreamMultiCallable:  # type: ignore[type-arg]
    return client.channel.stream_stream(path, None, None)


def reserve_bytes(reservation_id: str) -> bytes:
    return pb.ReserveRequest(reservation_id=reservation_id, order_ref="o",
                             lines=[pb.Line(sku="A", location="L", quantity=1)]).SerializeToString()


async def refusal(call: object) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo reason, message) of a refused call, read from its trailers."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    said = typed(err.value).refusal
    return said.code, said.reason, said.message


async def stream_refusal(call: grpc.aio.StreamStreamCall | grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
                         ) -> tuple[list[bytes], grpc.StatusCode, str, str]:
    """What the stream answered before it ended, and how it ended (code, reason, message)."""
    answers: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for message in call:
            answers.append(message)
    said = typed(err.value).refusal
    return answers, said.code, said.reason, said.message


async def _messages(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def bad_requests_counted(service: AtpService, method: str) -> float:
    return service.metrics.registry.get_sample_value("atp_bad_requests_total", {"method": method}) or 0.0


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_malformed_bytes_answer_invalid_argument_naming_the_type(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    service, client = await start_service()
    before = bad_requests_counted(service, "Reserve")
    with caplog.at_level(logging.DEBUG):
        code, reason, details = await refusal(raw_unary(client, SERVICE + "Reserve")(TRUNCATED))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
        assert details == "request is not a valid atp.v1.ReserveRequest: Wire format was corrupt"
        code, reason, details = await refusal(raw_unary(client, SERVICE + "Reserve")(BAD_UTF8))
        assert (code, reason, details) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED",
                                   "request is not a valid atp.v1.ReserveRequest: String field had bad UTF-8")
        _, code, reason, details = await stream_refusal(
            raw_unary_stream(client, SERVICE + "WatchAvailability")(BAD_UTF8))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
        assert "atp.v1.WatchAvailabilityRequest" in details
        # The open services too: a probe's bytes are no way to fill the log.
        code, reason, details = await refusal(raw_unary(client, "/grpc.health.v1.Health/Check")(BAD_UTF8))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
        assert "grpc.health.v1.HealthCheckRequest" in details
        # grpc_health's aio servicer has no List: UNIMPLEMENTED, without its placeholder's traceback.
        code, _, _ = await refusal(raw_unary(client, "/grpc.health.v1.Health/List")(b""))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        decided = await client.reserve("r-good", [("A", "L", 1)])
        assert decided.state == pb.RESERVATION_STATE_REJECTED  # the service goes on
    assert bad_requests_counted(service, "Reserve") == before + 2
    no_errors_logged(caplog)
    lines = [vars(r) for r in caplog.records if r.name == "atp_service.edge.handlers"]  # with their fields
    assert len(lines) == 4 and all(line["code"] == "INVALID_ARGUMENT" for line in lines)
    assert (await refusal(client.get_reservation("r-bad")))[0] == grpc.StatusCode.NOT_FOUND


async def test_a_malformed_batch_ends_the_stream_after_the_batches_before_it_are_answered(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    _, client = await start_service()
    good = pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(reservation_id="s1", order_ref="o",
                                                           lines=[pb.Line(sku="A", location="L", quantity=1)])])
    with caplog.at_level(logging.DEBUG):
        stream = raw_stream(client, SERVICE + "ReserveStream")(
            _messages([good.SerializeToString(), BAD_UTF8]))
        answers, code, reason, details = await stream_refusal(stream)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    assert details == "request is not a valid atp.v1.ReserveStreamRequest: Wire format was corrupt"
    assert [o.reservation_id for a in answers for o in pb.ReserveStreamResponse.FromString(a).outcomes] == ["s1"]
    # decided before the bad batch came
    assert (await client.get_reservation("s1")).state == pb.RESERVATION_STATE_REJECTED
    no_errors_logged(caplog)


async def test_a_flood_of_bad_bytes_is_counted_but_does_not_flood_the_log(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    service, client = await start_service()
    before = bad_requests_counted(service, "GetReservation")
    calls = 200
    with caplog.at_level(logging.DEBUG):
        for _ in range(calls):
            code, reason, _ = await refusal(raw_unary(client, SERVICE + "GetReservation")(BAD_UTF8))
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    assert bad_requests_counted(service, "GetReservation") == before + calls
    lines = [r for r in caplog.records if r.name == "atp_service.edge.handlers"]
    assert len(lines) < calls // 4  # a burst, then about one a second, however fast they come
    no_errors_logged(caplog)


def test_rate_limited_lines_say_how_many_were_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), logging.WARNING, burst=2, interval_s=10.0,
                           clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        for n in range(5):
            quiet.log("bad %d", n)
        now[0] += 10.0  # one line's worth
        quiet.log("bad %d", 5)
        quiet.log("bad %d", 6)
    assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1", "bad 5"]
    assert [getattr(r, "left_out", 0) for r in caplog.records] == [0, 0, 3]
    assert quiet.left_out == 1


@pytest.fixture
def oms_callers(tmp_path: Path) -> tuple[Path, str]:
    token = new_token()
    path = tmp_path / "callers.toml"
    path.write_text(f'[[callers]]\nname = "oms"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(token)}"\n')
    return path, token


async def log_length(redis_url: str, service: AtpService) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        prefix = service.config.key_prefix
        return sum([await client.xlen(Keyspace(prefix).log(shard)) for shard in range(service.config.shards)])
    finally:
        await client.aclose()


async def test_callers_without_a_valid_token_are_refused_before_their_bytes_are_parsed(
        start_service: ServiceFactory, oms_callers: tuple[Path, str], redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    callers, token = oms_callers
    service, anonymous = await start_service(auth="on", callers_file=callers)
    target = f"127.0.0.1:{service.port}"
    stranger = AtpClient(target, token="not-a-real-token")
    oms = AtpClient(target, token=token)
    written = await log_length(redis_url, service)
    try:
        with caplog.at_level(logging.DEBUG):
            for who in (anonymous, stranger):
                for body in (reserve_bytes("r-anon"), *GARBAGE):
                    expected = "TOKEN_MISSING" if who is anonymous else "TOKEN_INVALID"
                    code, reason, _ = await refusal(raw_unary(who, SERVICE + "Reserve")(body))
                    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, expected)
                    stream = raw_stream(who, SERVICE + "ReserveStream")(iter(()))  # refused before any read: a
                    # write would only race the refusal (grpcio may tell it INTERNAL, grpc/grpc#36066)
                    answers, code, reason, _ = await stream_refusal(stream)
                    assert (answers, code, reason) == ([], grpc.StatusCode.UNAUTHENTICATED, expected)
                    watch = raw_unary_stream(who, SERVICE + "WatchAvailability")(body)
                    assert (await stream_refusal(watch))[1] == grpc.StatusCode.UNAUTHENTICATED
                    code, reason, _ = await refusal(raw_unary(who, SERVICE + "RecordEvents")(body))
                    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, expected)
            code, reason, _ = await refusal(oms.get_reservation("r-anon"))
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
            assert await log_length(redis_url, service) == written  # nothing was written
            denied = service.metrics.registry.get_sample_value("atp_auth_denied_total", {"code": "UNAUTHENTICATED"})
            audit_lines = sum(r.name == "atp_service.audit" for r in caplog.records)
            for _ in range(100):  # a flood without a token is counted, and not written out line by line
                code, reason, _ = await refusal(raw_unary(anonymous, SERVICE + "Reserve")(BAD_UTF8))
                assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
            assert service.metrics.registry.get_sample_value("atp_auth_denied_total", {"code": "UNAUTHENTICATED"}) \
                == (denied or 0) + 100
            assert sum(r.name == "atp_service.audit" for r in caplog.records) - audit_lines < 50
            # An authenticated caller's bad bytes are bad input, named as such.
            code, reason, details = await refusal(raw_unary(oms, SERVICE + "Reserve")(BAD_UTF8))
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
            assert "atp.v1.ReserveRequest" in details
    finally:
        await stranger.close()
        await oms.close()
    no_errors_logged(caplog)
    audit_text = [f"{r.getMessage()} {vars(r)}" for r in caplog.records if r.name == "atp_service.audit"]
    assert not any("had bad UTF-8" in line or "corrupt" in line for line in audit_text)
