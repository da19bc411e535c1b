"""Q4 from the estate file is bounded as SetSafetyStock's: past max_quantity, Q5 could leave int64."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.channels.estate import MIN_RATE_PER_S, EstateError, load_estate, parse_estate
from atp_service.storage.keys import Keyspace
from reservation import Limits
from reservation._bucket import TokenBucket
from reservation._validate import NOT_PRINTABLE


@pytest.mark.parametrize(("data", "message"), [
    ({"locations": [{"id": "x", "type": "dc", "safety_stock": 2**63 - 1}]},
     "locations[0].safety_stock: must be at most 1000000 (limit max_quantity)"),
    ({"locations": [{"id": "x", "type": "dc", "safety_stock": 2**63}]},
     "locations[0].safety_stock: must be at most 1000000 (limit max_quantity)"),
    ({"safety_stock": {"store": 1_000_001}}, "safety_stock.store: must be at most 1000000 (limit max_quantity)"),
    ({"safety_stock": {"dc": True}}, "safety_stock.dc: must be a non-negative integer"),
])
def test_safety_stock_past_the_limit_names_the_key_and_the_limit_Q4(data: dict[str, object], message: str) -> None:
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value) == message


def test_the_bound_is_the_configured_max_quantity_Q4(tmp_path: Path) -> None:
    data = {"safety_stock": {"store": 5}, "locations": [{"id": "s", "type": "store"}]}
    assert parse_estate(data).safety_defaults == {"s": 5}
    with pytest.raises(EstateError, match=r"safety_stock.store: must be at most 4 \(limit max_quantity\)"):
        parse_estate(data, Limits(max_quantity=4))
    path = tmp_path / "estate.toml"
    path.write_text('[[locations]]\nid = "s"\ntype = "store"\nsafety_stock = 9223372036854775807\n')
    with pytest.raises(EstateError, match=r"locations\[0\].safety_stock: must be at most 1000000"):
        load_estate(path)
    with pytest.raises(EstateError, match="must be at most 2147483647"):
        load_estate(path, Limits(max_quantity=2**31 - 1, max_on_hand=2**53))


X = [{"id": "x", "type": "dc"}]


def _channel(**keys: object) -> dict[str, object]:
    return {"locations": X, "channels": [{"name": "c", "sells_from": ["x"], **keys}]}


@pytest.mark.parametrize(("data", "message"), [
    (_channel(max_shown=2**63), "channels[0].max_shown: must be at most 9223372036854775807"),
    (_channel(allocation=2**70), "channels[0].allocation: must be at most 9223372036854775807"),
    (_channel(buffer_units=2**64), "channels[0].buffer_units: must be at most 9223372036854775807"),
    (_channel(stream_maxlen=2**64), "channels[0].stream_maxlen: must be at most 9223372036854775807"),
    (_channel(rate_limit_per_s=float("inf")), "channels[0].rate_limit_per_s: must be a finite number"),
    (_channel(rate_limit_per_s=1e-310),
     "channels[0].rate_limit_per_s: must be at least 1e-06 (one update in ~11.6 days)"),
    (_channel(rate_limit_per_s=5e-7),
     "channels[0].rate_limit_per_s: must be at least 1e-06 (one update in ~11.6 days)"),
    (_channel(buffer_percent=float("-inf")), "channels[0].buffer_percent: must be a finite number"),
    ({"locations": X, "groups": ["x"]}, "groups: must be a table of group = [locations] or {type, region}"),
    ({"locations": X, "groups": 5}, "groups: must be a table of group = [locations] or {type, region}"),
    (_channel(sells_from=[{"id": "x"}]), "channels[0].sells_from: must be a non-empty list of locations or groups"),
    (_channel(sells_from=[["x"]]), "channels[0].sells_from: must be a non-empty list of locations or groups"),
])
def test_a_value_the_channel_desk_cannot_compute_with_is_refused_naming_its_key(
        data: dict[str, object], message: str) -> None:
    """Defect: these were taken (or failed with a bare TypeError/ValueError that named no key). A
    count past int64 (TOML takes any integer) made C1's numpy arithmetic raise OverflowError in
    the channel desk's round, which ended the desk for good: no channel published anything more,
    a stock-out included; an infinite rate did the same in the feed's token bucket, and so did a
    positive rate near 1e-306 (its wait for a token, ``1000 / rate`` ms, overflowed to infinity)."""
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value) == message


def test_a_file_that_is_not_utf8_is_refused_naming_the_file_s_fault(tmp_path: Path) -> None:
    path = tmp_path / "estate.toml"
    path.write_bytes(b'[[locations]]\nid = "caf\xe9"\ntype = "dc"\n')  # Latin-1, as an old editor saves it
    with pytest.raises(EstateError, match="not UTF-8 text"):
        load_estate(path)


@pytest.mark.parametrize(("names", "message"), [
    (["owner"], "channels[0].name: 'owner' is reserved (a key of the channel feeds has that name)"),
    (["fence"], "channels[0].name: 'fence' is reserved (a key of the channel feeds has that name)"),
    (["web", "web:state"], "channels: 'web' and 'web:state' would share a Redis key"),
    (["web", "web:restamp"], "channels: 'web' and 'web:restamp' would share a Redis key"),
    (["web:lease:publisher", "web"], "channels: 'web' and 'web:lease:publisher' would share a Redis key"),
    (["web", "web:delivered"], "channels: 'web' and 'web:delivered' would share a Redis key"),
    (["web\nshop"], f"channels[0].name: {NOT_PRINTABLE}"),
    (["w" * 300], "channels[0].name: longer than 128 bytes (limit max_id_length)"),
])
def test_a_channel_name_that_would_be_another_key_of_the_feeds_is_refused_C1(names: list[str], message: str) -> None:
    """A channel's stream is ``<prefix>{avail}:<name>``: named ``owner`` or ``fence`` it was the feeds'
    owner key or fence, and ``x`` beside ``x:state`` shared a key, so every publish of every channel
    (the desk writes them in one script) was refused; a name WatchAvailability refuses was never watchable."""
    data = {"locations": X, "channels": [{"name": name, "sells_from": ["x"]} for name in names]}
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value) == message


@pytest.mark.parametrize(("data", "message"), [
    ({"locations": [{"id": "s" * 129, "type": "store"}]},
     "locations[0].id: longer than 128 bytes (limit max_id_length)"),
    ({"locations": [{"id": "store\t1", "type": "store"}]}, f"locations[0].id: {NOT_PRINTABLE}"),
    ({"locations": [{"ids": ["s1", "s\u200b2"], "type": "store"}]}, f"locations[0].ids[1]: {NOT_PRINTABLE}"),
    ({"locations": X, "groups": {"g" * 129: ["x"]}},
     f"groups.{'g' * 129}: longer than 128 bytes (limit max_id_length)"),
    ({"locations": X, "groups": {"east\nwest": ["x"]}}, f"groups.'east\\nwest': {NOT_PRINTABLE}"),
])
def test_a_location_or_group_the_api_cannot_name_is_refused_naming_its_key(data: dict[str, object],
                                                                           message: str) -> None:
    """A location id or a group name is what a Reserve line names as its location and a fact as its own:
    one the API refuses (``check_id``: past max_id_length, not printable) was taken, and every fact and
    Reserve naming it was then refused INVALID_FIELD — stock there never counted, never offered (C1)."""
    with pytest.raises(EstateError) as err:
        parse_estate(data)
    assert str(err.value) == message


def test_the_slowest_rate_taken_still_gives_the_bucket_a_wait_it_can_count_C2() -> None:
    estate = parse_estate(_channel(rate_limit_per_s=MIN_RATE_PER_S, burst=1))
    bucket = TokenBucket(estate.channels["c"].policy.rate_per_s, 1, 0)
    assert bucket.try_take() and not bucket.try_take()
    assert bucket.ms_until_token() == 10**9 + 1  # about 11.6 days, an int the desk can sleep on


def test_a_channel_named_after_another_s_restamp_or_publisher_key_is_refused_C1_C4() -> None:
    """``web:restamp``'s stream was ``web``'s restamp hash (``<prefix>{avail}:web:restamp``): whichever came first,
    the other failed on it for good — the desk's writes of ``web:restamp`` refused KEYTYPE (set aside, never
    published, C1), or ``web``'s publishers refused when naming the keys Redis lost (C4), the desk's reads of them
    WRONGTYPE, and the runbook's fix (``DEL`` the key) deleting the other channel's feed. Likewise a channel named
    as a publisher's key of another (its lease, its delivered versions, dead letters, redeliveries). Only such
    names: ``web:eu`` beside ``web`` shares none."""
    keys = Keyspace("atp:")
    assert keys.channel_restamp("web") == keys.channel_stream("web:restamp")
    assert keys.publisher_key("web", "lease", "publisher") == keys.channel_stream("web:lease:publisher")
    assert keys.publisher_key("web", "delivered", "state") == keys.channel_state("web:delivered")
    for names in (["web", "web:restamp"], ["web:lease:publisher", "web"], ["web", "web:delivered"]):
        with pytest.raises(EstateError, match="would share a Redis key"):
            parse_estate({"locations": X, "channels": [{"name": name, "sells_from": ["x"]} for name in names]})
    names = ["web", "web:eu", "web:restamps", "web:state:eu", "webrestamp"]
    estate = parse_estate({"locations": X, "channels": [{"name": name, "sells_from": ["x"]} for name in names]})
    assert sorted(estate.channels) == sorted(names)
