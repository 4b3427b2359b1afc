"""Servers and trainers on separate hosts: network namespaces joined by a bridge.

Each process runs in its own namespace (``ip netns exec``) and talks to the
others only over addresses inside the namespaces this test creates. Exactly
once per epoch is checked from the per-sample epochs and indices in the
batch headers.
"""

import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness import netns
from harness.children import ChildProcess, ServerProcess
from harness.datasets import random_images, write_lmdb

SIZE, BATCH, EPOCHS, PORT = 60, 6, 2, 5555

reason = netns.available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(reason is not None, reason=reason or "")]


@pytest.fixture(scope="module")
def lmdb_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multihost")
    return "lmdb:%s" % write_lmdb(folder / "db", random_images(SIZE, (3, 24, 24)), range(SIZE), encode=".png")


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    """2.9 MB batches: no trainer can swallow the whole stream in its socket buffers."""
    folder = tmp_path_factory.mktemp("multihost_large")
    return "lmdb:%s" % write_lmdb(folder / "db", random_images(SIZE, (3, 200, 200)), range(SIZE))


def start_trainer(host, out, count, connect=(), bind=None, work_s=0.0):
    """The trainer probe in ``host``; it is ready once its socket is connecting or listening."""
    ready = out.with_suffix(".ready")
    argv = [sys.executable, "-m", "harness.trainer_probe", str(out), str(count), "--timeout", "30",
            "--work", str(work_s), "--ready-file", str(ready)]
    argv += [a for address in connect for a in ("--connect", address)]
    argv += ["--bind", bind] if bind else []
    return ChildProcess(host.command(argv), out.with_suffix(".log"), ready_path=ready)


def finish(trainer, out):
    assert trainer.wait(60) == 0, trainer.log
    return json.loads(Path(out).read_text())["batches"]


def check_exactly_once(batches, epochs=EPOCHS):
    counts = Counter((e, i) for b in batches for e, i in zip(b["epochs"], b["indices"]))
    assert set(e for e, _ in counts) == set(range(epochs))
    for epoch in range(epochs):
        assert sorted(i for (e, i) in counts if e == epoch) == list(range(SIZE))
    assert max(counts.values()) == 1
    keys = [(b["stream"], b["seq"]) for b in batches]
    assert len(keys) == len(set(keys))  # no batch duplicated


@pytest.mark.parametrize("topology", ["trainer-connects", "servers-connect"])
def test_two_server_hosts_one_trainer_host(tmp_path, lmdb_source, topology):
    with netns.Network(["server0", "server1", "trainer"]) as net, ExitStack() as children:
        trainer_host = net.hosts["trainer"]
        servers = []
        for shard in range(2):
            host = net.hosts["server%d" % shard]
            where = (["--bind", "tcp://%s:%d" % (host.address, PORT)] if topology == "trainer-connects"
                     else ["--connect", "tcp://%s:%d" % (trainer_host.address, PORT)])
            servers.append(children.enter_context(ServerProcess(
                ["--source", lmdb_source, *where, "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
                 "--shard", "%d/2" % shard, "--workers", "1", "--crop-size", "20", "--mirror"],
                tmp_path / ("server%d.log" % shard), prefix=host.command([]))))
        out = tmp_path / "trainer.json"
        if topology == "trainer-connects":
            trainer = start_trainer(trainer_host, out, EPOCHS * SIZE // BATCH,
                                    connect=["tcp://%s:%d" % (net.hosts["server%d" % s].address, PORT)
                                             for s in range(2)])
        else:
            trainer = start_trainer(trainer_host, out, EPOCHS * SIZE // BATCH,
                                    bind="tcp://%s:%d" % (trainer_host.address, PORT))
        children.enter_context(trainer)
        batches = finish(trainer, out)
        for server in servers:
            assert server.wait() == 0, server.log
    check_exactly_once(batches)
    assert len({b["stream"] for b in batches}) == 2


@pytest.mark.parametrize("topology", ["trainers-connect", "server-connects"])
def test_one_server_host_two_trainer_hosts(tmp_path, large_images, topology):
    with netns.Network(["server", "trainer0", "trainer1"]) as net, ExitStack() as children:
        server_host = net.hosts["server"]
        trainers, outs = [], []
        for number in range(2):
            host = net.hosts["trainer%d" % number]
            out = tmp_path / ("trainer%d.json" % number)
            outs.append(out)
            if topology == "trainers-connect":
                trainers.append(children.enter_context(start_trainer(
                    host, out, 0, connect=["tcp://%s:%d" % (server_host.address, PORT)], work_s=0.05)))
            else:
                trainers.append(children.enter_context(start_trainer(
                    host, out, 0, bind="tcp://%s:%d" % (host.address, PORT), work_s=0.05)))
        where = (["--bind", "tcp://%s:%d" % (server_host.address, PORT)] if topology == "trainers-connect" else
                 [a for n in range(2) for a in ("--connect", "tcp://%s:%d" % (net.hosts["trainer%d" % n].address, PORT))])
        for trainer in trainers:  # both ready before any batch flows: none can take them all
            trainer.wait_ready()
        # One batch a message, so that this short stream is shared batch by batch.
        with ServerProcess(["--source", large_images, *where, "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
                            "--workers", "1", "--phase", "test", "--max-batches-per-message", "1"],
                           tmp_path / "server.log", prefix=server_host.command([])) as server:
            received = [finish(trainer, out) for trainer, out in zip(trainers, outs)]
            assert server.wait() == 0, server.log
    assert all(received), "each trainer gets batches"
    check_exactly_once(received[0] + received[1])


@pytest.mark.parametrize("topology", ["trainer-connects", "servers-connect"])
def test_a_network_partition_shorter_than_the_timeout_loses_and_repeats_nothing(tmp_path, large_images, topology):
    """One of two shard servers' hosts is cut off the network for 3 s mid-stream, with batches
    on the wire. Its connection outlives the partition (TCP retransmits, ZeroMQ sends no
    heartbeats that could close it), so what was in flight arrives afterwards, once."""
    epochs, partition_s = 12, 3.0
    batches_in_all = epochs * SIZE // BATCH
    with netns.Network(["server0", "server1", "trainer"]) as net, ExitStack() as children:
        trainer_host = net.hosts["trainer"]
        out = tmp_path / "trainer.json"
        if topology == "trainer-connects":
            trainer = start_trainer(trainer_host, out, batches_in_all, work_s=0.05,
                                    connect=["tcp://%s:%d" % (net.hosts["server%d" % s].address, PORT)
                                             for s in range(2)])
        else:
            trainer = start_trainer(trainer_host, out, batches_in_all, work_s=0.05,
                                    bind="tcp://%s:%d" % (trainer_host.address, PORT))
        children.enter_context(trainer)
        trainer.wait_ready()
        servers = []
        for shard in range(2):
            host = net.hosts["server%d" % shard]
            where = (["--bind", "tcp://%s:%d" % (host.address, PORT)] if topology == "trainer-connects"
                     else ["--connect", "tcp://%s:%d" % (trainer_host.address, PORT)])
            servers.append(children.enter_context(ServerProcess(
                ["--source", large_images, *where, "--batch-size", str(BATCH), "--epochs", str(epochs),
                 "--shard", "%d/2" % shard, "--workers", "1", "--stream-id", "shard%d" % shard,
                 "--max-batches-per-message", "1"],
                tmp_path / ("server%d.log" % shard), prefix=host.command([]))))
        time.sleep(1.5)  # the trainer needs about 6 s for the stream: cut it in the middle
        net.set_link("server0", up=False)
        time.sleep(partition_s)
        net.set_link("server0", up=True)
        batches = finish(trainer, out)
        for server in servers:
            assert server.wait() == 0, server.log
    check_exactly_once(batches, epochs)
    cut_off = [b["at"] for b in batches if b["stream"] == "shard0"]
    assert len(cut_off) == batches_in_all // 2
    gaps = [later - earlier for earlier, later in zip(cut_off, cut_off[1:])]
    assert max(gaps) >= partition_s - 1.0, "the partition held back shard 0's batches mid-stream: %s" % gaps
