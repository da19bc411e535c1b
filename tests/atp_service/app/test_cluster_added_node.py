"""The service while an operator scales its Redis Cluster out (``redis-cli --cluster add-node``, then ``reshard``):
a node that serves no slot yet imports one, and until the slot is its own the node that served it answers ASK for
every key moved already. The service's reads follow it there, and what cannot run there meanwhile (a script whose
keys are not all there: TRYAGAIN) waits for the move: nothing stops, nothing is lost."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from atp_client import AtpClient
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.fact_helpers import F
from tests.conftest import services_on
from tests.slot_moves import SlotMove
from tests.waiting import until

STREAM = "atp:{in}:pos"
ON_CLUSTER = {"redis_cluster": True, "input_streams": (STREAM,), "dead_letter_stream": "atp:{in}:dlq",
              "quarantine_stream": "atp:{in}:quarantine"}


async def test_the_input_streams_slot_moving_to_an_added_node_stops_nothing_and_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The input streams' slot migrating to an added node, the streams moved already: the reader's reads are refused
    meanwhile (its script's keys are not all there) and tried again, and once the slot is the added node's, a fact
    written there during the move is applied. The reader looked the ASK's node up in its slot map, which names no
    node serving no slot, and ended ``AttributeError`` ('NoneType' object has no attribute ...), which it did not take
    for Redis away: the service stopped to be restarted (and started again before the move was done, failed so)."""
    caplog.set_level(logging.WARNING, logger="atp_service.intake.ingest")
    with EmbeddedCluster(tmp_path / "cluster", primaries=1) as cluster:
        async with services_on(cluster.url, **ON_CLUSTER) as start:
            service, client = await start(redis_timeout_s=2.0)
            await client.record_events([receipt("r0", "A", "S1", 1)])
            source = cluster.primaries[0]
            with redis.Redis(host="127.0.0.1", port=source.port) as admin:
                admin.xadd(STREAM, F("r1", "RECEIPT", "A", "S1", 2, _now_ms()).fields())
                slot = int(admin.execute_command("CLUSTER", "KEYSLOT", STREAM))
            await until(lambda: _on_hand(client, 3), "the fact before the move applied")
            added = cluster.add_node()
            move = SlotMove(cluster, slot, source.port, added.port)
            move.begin()
            move.move_keys()  # the slot still the source's, which answers ASK for the streams
            caplog.clear()  # (the event loop waited meanwhile: no read was answered during the moves)
            with redis.Redis(host="127.0.0.1", port=added.port) as importing:
                pipe = importing.pipeline(transaction=False)  # ASKING allows the next command of its connection
                pipe.execute_command("ASKING")
                pipe.xadd(STREAM, F("r2", "RECEIPT", "A", "S1", 4, _now_ms()).fields())
                pipe.execute()
            await until(lambda: service.failed.is_set() or any(
                getattr(r, "event", None) == "ingest_read_failed" for r in caplog.records), "a read during the move")
            assert not service.failed.is_set()
            move.finish()
            await until(lambda: _on_hand(client, 7), "the fact written on the importing node applied")
            with redis.Redis(host="127.0.0.1", port=added.port) as moved:
                moved.xadd(STREAM, F("r3", "RECEIPT", "A", "S1", 8, _now_ms()).fields())
            await until(lambda: _on_hand(client, 15), "the fact written after the move applied")
            assert not service.failed.is_set()


async def _on_hand(client: AtpClient, units: int) -> bool:
    (position,) = await client.availability([("A", "S1")])
    return bool(position.on_hand == units)


def _now_ms() -> int:
    return int(time.time() * 1000)
