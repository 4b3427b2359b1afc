"""Issue 16.12b: two servers serving one trainer the same shard are noticed and reported.

The detector alone (unit), then real server processes over tcp on 127.0.0.1 (integration).
"""

import logging
import re
import time

import pytest

from client_layer import BatchClient, shard_overlap
from client_layer.shard_overlap import ShardOverlap
from client_layer.wire import StreamOrigin
from harness.datasets import random_images
from harness.children import ServerProcess, free_port
from server import sender

MESSAGE = 1000
LEFTOVER = 10 * MESSAGE


def origin(server, shard=(0, 2), seed=0):
    return StreamOrigin(server, shard[0], shard[1], seed, 500)


def detector():
    return ShardOverlap(lambda: LEFTOVER, lambda: "connected to tcp://a:1")


@pytest.mark.unit
def test_a_restarted_server_is_not_an_overlap(caplog):
    """The old server's leftovers may arrive after the new one's first message, up to the bound."""
    overlap = detector()
    for _ in range(50):
        overlap.saw(origin("old"), MESSAGE)
    for _ in range(LEFTOVER // MESSAGE):
        overlap.saw(origin("new"), MESSAGE)
        overlap.saw(origin("old"), MESSAGE)
    for _ in range(50):
        overlap.saw(origin("new"), MESSAGE)
    overlap.saw(origin("newer"), MESSAGE)  # and it restarts again
    assert overlap.overlaps == 0 and not caplog.records


@pytest.mark.unit
@pytest.mark.parametrize("first, second, reported", [
    (origin("a", (0, 2), seed=1), origin("b", (0, 2), seed=1), True),
    (origin("a", (0, 2), seed=1), origin("b", (0, 2), seed=2), True),   # sharded: the same samples whatever the seed
    (origin("a", (0, 1), seed=1), origin("b", (0, 1), seed=1), True),   # unsharded replicas with one seed
    (origin("a", (0, 1), seed=1), origin("b", (0, 1), seed=2), False),  # replicas with their own seeds
    (origin("a", (0, 2), seed=1), origin("b", (1, 2), seed=1), False),
    (origin("a", (0, 2)), StreamOrigin("b", 0, 2, 0, 501), False),    # other data
])
def test_two_live_servers_of_one_shard_are_reported_once(caplog, first, second, reported):
    overlap = detector()
    with caplog.at_level(logging.WARNING, logger="zfeed.client"):
        for _ in range(100):
            overlap.saw(first, MESSAGE)
            overlap.saw(second, MESSAGE)
    assert overlap.overlaps == int(reported)
    assert len(caplog.records) == int(reported)
    if reported:
        text = caplog.records[0].getMessage()
        assert "servers a and b both serve shard %d/%d" % (first.shard_index, first.shard_count) in text


@pytest.mark.unit
def test_the_leftover_bound_holds_what_the_server_queues():
    assert shard_overlap.SERVER_QUEUED_MESSAGES == sender.QUEUED_PER_TRAINER + 1
    assert shard_overlap.SERVER_BUFFER_BYTES == 2 * sender.SEND_BUFFER_BYTES


def server_id(server):
    server.wait_for_log("server id")
    return re.search(r"server id ([0-9a-f]+)", server.log).group(1)


@pytest.mark.integration
@pytest.mark.parametrize("shards, reported", [(("0/2", "0/2"), True), (("0/2", "1/2"), False)])
def test_two_servers_given_one_shard_are_reported_by_the_trainer(tmp_path, npz_source, caplog, shards, reported):
    """Messages of about 1.5 MB (4 batches): the report comes after a few tens of batches from each
    (the larger the messages, the more an old server may still have queued, and the later)."""
    source = npz_source(random_images(512, (3, 64, 64), seed=4))
    ports = [free_port(), free_port()]
    servers = [ServerProcess(["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--shard", shard,
                              "--seed", "7", "--batch-size", "32", "--workers", "1", "--max-batches-per-message", "4"],
                             tmp_path / ("s%d.log" % i))
               for i, (port, shard) in enumerate(zip(ports, shards))]
    try:
        ids = [server_id(server) for server in servers]
        with caplog.at_level(logging.WARNING, logger="zfeed.client"):
            with BatchClient(["tcp://127.0.0.1:%d" % port for port in ports], timeout_s=10) as client:
                deadline = time.monotonic() + 30
                received = 0
                while received < 400 and time.monotonic() < deadline and not client.overlapping_shards:
                    client.receive()
                    received += 1
                overlaps = client.overlapping_shards
        for server in servers:
            assert server.stop() == 0
    finally:
        for server in servers:
            server.kill()
    warnings = [r.getMessage() for r in caplog.records if "two data servers" in r.getMessage()]
    if reported:
        assert overlaps == 1 and len(warnings) == 1, (received, warnings)
        assert set(re.findall(r"servers (\w+) and (\w+)", warnings[0])[0]) == set(ids)
        assert "shard 0/2 of 512 samples" in warnings[0]
    else:
        assert received == 400 and overlaps == 0 and not warnings
