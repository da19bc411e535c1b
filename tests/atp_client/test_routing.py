"""The pure parts of routing: placement, a reservation's home group, ``atp-moved``, the bounded
LRU and what a ``GetRouting`` answer says."""

from __future__ import annotations

import zlib

import pytest

from atp_client import MAX_GROUPS, PLACEMENT, Routes, home_group, parse_moved, place
from atp_client._routing import Lru, moved_of
from atp_client.pb.atp.v1 import atp_pb2 as pb


def test_placement_is_crc32_of_the_utf8_bytes_modulo_the_groups() -> None:
    assert PLACEMENT == "crc32-mod"
    for sku in ("A", "sku-00001", "Größe-42", "商品-7", ""):
        assert place(sku, 16) == zlib.crc32(sku.encode("utf-8")) % 16
    assert place("sku-00001", 1) == 0
    assert place("123456789", 1000) == 0xCBF43926 % 1000  # the check value of CRC-32 (ISO-HDLC, zlib)


def test_the_home_group_is_the_lowest_group_of_the_lines() -> None:
    skus = ["A", "B", "C", "D", "E"]
    groups = [place(s, 8) for s in skus]
    assert home_group(skus, 8) == min(groups)
    assert home_group(["A"], 8) == place("A", 8)
    assert home_group(["A", "A"], 8) == place("A", 8)


@pytest.mark.parametrize(("value", "parsed"), [
    ("5 10.0.0.7:50051", (5, "10.0.0.7:50051")),
    ("5 ", (5, "")),  # no process owns group 5 now
    ("5", (5, "")),   # the same, with the trailing space dropped on the way
    (b"12 atp-2.internal:50051", (12, "atp-2.internal:50051")),
    ("0 [::1]:50051", (0, "[::1]:50051")),
])
def test_atp_moved_names_a_group_and_its_owner(value: str | bytes, parsed: tuple[int, str]) -> None:
    assert parse_moved(value) == parsed


@pytest.mark.parametrize("value", ["", " ", "x 10.0.0.7:1", "-1 a:1", "1.5 a:1", "1 a:1 b:2"])
def test_anything_else_is_no_redirect(value: str) -> None:
    assert parse_moved(value) is None


def test_the_redirect_is_read_from_the_trailing_metadata() -> None:
    trailers = (("grpc-status-details-bin", b"\x08\x0e"), ("grpc-retry-pushback-ms", "50"), ("atp-moved", "3 h:1"))
    assert moved_of(trailers) == (3, "h:1")
    assert moved_of(trailers[:2]) is None
    assert moved_of(None) is None


def test_the_lru_keeps_the_most_recently_used_up_to_its_limit() -> None:
    lru: Lru[str, int] = Lru(2)
    assert lru.put("a", 1) is None and lru.put("b", 2) is None
    assert lru.get("a") == 1  # a is now the most recent
    assert lru.put("c", 3) == ("b", 2)
    assert (lru.get("b"), lru.get("a"), lru.get("c"), len(lru)) == (None, 1, 3, 2)
    assert lru.put("a", 10) is None and lru.get("a") == 10  # a new value for a kept key drops nothing
    assert lru.pop("a") == 10 and lru.values() == [3]
    with pytest.raises(ValueError, match="limit"):
        Lru(0)


def test_the_lru_drops_the_least_recently_used_entry_not_busy_and_the_oldest_when_all_are() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.put("c", 3, busy=lambda value: value == 1) == ("b", 2)  # a, older, is busy
    assert lru.values() == [1, 3]
    assert lru.put("d", 4, busy=lambda _: True) == ("a", 1)  # every other one busy: the oldest
    assert lru.values() == [3, 4]


def test_routes_of_a_get_routing_answer() -> None:
    answer = pb.GetRoutingResponse(shards=4, placement="crc32-mod", address="p1:1", groups=[
        pb.GroupRoute(group=0, address="p1:1", epoch=3), pb.GroupRoute(group=2, address="p2:1", epoch=1),
        pb.GroupRoute(group=3, address="", epoch=2), pb.GroupRoute(group=9, address="stray:1"),
    ])
    routes = Routes.of(answer)
    assert routes.routable and routes.shards == 4
    assert [routes.owner(g) for g in range(4)] == ["p1:1", "", "p2:1", ""]  # group 1 unnamed: no owner known
    assert routes.owner(None) == routes.owner(7) == ""
    assert routes.addresses() == ["p1:1", "p2:1"]
    assert routes.home(["A", "B"]) == home_group(["A", "B"], 4)
    assert routes.home([]) is None


def test_a_placement_this_client_does_not_know_routes_nothing() -> None:
    routes = Routes.of(pb.GetRoutingResponse(shards=4, placement="jump-hash", address="p1:1",
                                             groups=[pb.GroupRoute(group=0, address="p1:1")]))
    assert not routes.routable and routes.home(["A"]) is None
    assert not Routes.of(pb.GetRoutingResponse(placement="crc32-mod", address="p1:1")).routable  # no groups


def test_a_routing_answer_naming_more_groups_than_a_keyspace_can_have_routes_nothing() -> None:
    """A table is sized by the answer's ``shards``: an answer past the service's own bound (a
    process of another build, a corrupted reply) must not make the client allocate for it."""
    routes = Routes.of(pb.GetRoutingResponse(shards=2**31 - 1, placement="crc32-mod", address="p1:1",
                                             groups=[pb.GroupRoute(group=5, address="p2:1")]))
    assert not routes.routable and routes.owners == () and routes.home(["A"]) is None
    assert routes.addresses() == ["p1:1"]  # still a process to send every call to
    edge = Routes.of(pb.GetRoutingResponse(shards=MAX_GROUPS, placement="crc32-mod", address="p1:1"))
    assert edge.routable and len(edge.owners) == MAX_GROUPS
