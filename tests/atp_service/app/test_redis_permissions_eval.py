"""On a Redis Cluster the input streams' scripts (``register_script``) are sent whole (``EVAL``) to a node that lacks
them (restarted, a replica promoted), not loaded there (``SCRIPT LOAD``: ``storage/clients.py``). The start asked
``EVALSHA`` and ``SCRIPT LOAD`` alone: a user denied ``EVAL`` started, then every read of the input streams failed
NOPERM from the first failover or restart of their node, for good. On one Redis they are loaded as before (``EVAL``
is not sent there for them: such a user starts, where no channel feed sends it either)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from atp_service import AtpService
from atp_service.storage.clients import close_any, connect_any
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.app.test_redis_permissions import USER, admin, as_user, refused_start, set_user
from tests.conftest import test_config as make_config

IN = {"input_streams": ("atp:{in}:pos",), "dead_letter_stream": "atp:{in}:dlq",
      "quarantine_stream": "atp:{in}:quarantine"}
__all__ = ["admin"]  # the fixture, shared
DEMO_ESTATE = Path(__file__).parents[3] / "atp_service/app/demo_estate.toml"  # (its channels)


async def _denied_eval_everywhere(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        await set_user(node.url, "~*", "+@all", "-eval")


async def _forget_user(cluster: EmbeddedCluster) -> None:
    for node in cluster.nodes:
        async with aioredis.Redis.from_url(node.url) as client:
            await client.execute_command("ACL", "DELUSER", USER)


async def test_on_a_cluster_a_user_denied_eval_is_refused_at_start_naming_it(redis_cluster: EmbeddedCluster,
                                                                               cluster_url: str) -> None:
    try:
        await _denied_eval_everywhere(redis_cluster)
        said = await refused_start(as_user(cluster_url), make_config(redis_cluster=True, **IN))
        assert "redis_url: the Redis user may not run commands the service sends" in said, said
        assert "  EVAL on " in said and "the input streams" in said, said
    finally:
        await _forget_user(redis_cluster)


async def test_on_a_cluster_the_input_streams_scripts_are_sent_whole_where_a_node_lacks_them(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """What the start asks for: such a script, denied ``EVAL``, fails where its node lacks it."""
    try:
        await _denied_eval_everywhere(redis_cluster)
        client = connect_any(as_user(cluster_url), 5.0, cluster=True)
        try:
            script = client.register_script("return 1")
            for node in redis_cluster.primaries:  # as after a restart or a failover: the node lacks it
                async with aioredis.Redis(host="127.0.0.1", port=node.port) as direct:
                    await direct.script_flush()
            with pytest.raises(NoPermissionError, match="eval"):
                await script(keys=["atp:{in}:pos"])
        finally:
            await close_any(client)
    finally:
        await _forget_user(redis_cluster)


async def test_on_one_redis_a_user_denied_eval_starts(redis_url: str, admin: aioredis.Redis) -> None:
    await set_user(redis_url, "~*", "+@all", "-eval")
    service = AtpService(make_config(), as_user(redis_url))
    try:
        await service.start()
    finally:
        await service.stop(grace_s=0)



async def test_with_channels_a_user_denied_eval_is_refused_at_start_naming_the_channel_feeds(
        redis_url: str, admin: aioredis.Redis) -> None:
    """The channel desk forgets the keys a publisher named to publish again with ``EVAL`` (``ChannelStore.
    forget_restamps``), on one Redis as on a cluster: a user denied it started, then each look failed NOPERM and
    the keys stayed named for good."""
    await set_user(redis_url, "~*", "+@all", "-eval")
    said = await refused_start(as_user(redis_url), make_config(estate=DEMO_ESTATE))
    assert "  EVAL on " in said and "the channel feeds" in said, said
