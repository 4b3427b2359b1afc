"""Scaling out on one host: shards, several trainers, both topologies, metrics.

The same behaviours across separate network hosts are in test_multihost.py.
"""

import os
import signal
import time
import urllib.request
from collections import Counter

import pytest

from client_layer import BatchClient
from harness.children import ServerProcess, child_pids, free_port, run_server
from harness.datasets import corrupt_records, random_images, write_lmdb

pytestmark = pytest.mark.integration

SIZE, BATCH = 45, 5


@pytest.fixture
def source(npz_source):
    return npz_source(random_images(SIZE, (3, 8, 8)))


def per_epoch(batches):
    counts = Counter((int(e), int(i)) for b in batches for e, i in zip(b.epochs, b.indices))
    return counts


@pytest.mark.parametrize("topology", ["trainer-connects", "servers-connect"])
def test_two_shards_feed_one_trainer_each_sample_once_per_epoch(tmp_path, source, topology):
    ports = [free_port(), free_port()]
    trainer_port = free_port()
    servers = []
    try:
        for shard, port in enumerate(ports):
            where = (["--bind", "tcp://127.0.0.1:%d" % port] if topology == "trainer-connects"
                     else ["--connect", "tcp://127.0.0.1:%d" % trainer_port])
            servers.append(ServerProcess(["--source", source, *where, "--batch-size", str(BATCH), "--seed", "4",
                                          "--shard", "%d/2" % shard, "--epochs", "2"],
                                         tmp_path / ("server%d.log" % shard)))
        if topology == "trainer-connects":
            client = BatchClient(["tcp://127.0.0.1:%d" % p for p in ports], timeout_s=20)
        else:
            client = BatchClient(bind="tcp://127.0.0.1:%d" % trainer_port, timeout_s=20)
        with client:
            # shards of 23 and 22 samples: 10 and 9 batches for two epochs each
            batches = [client.receive() for _ in range(19)]
        for server in servers:
            assert server.wait() == 0, server.log
    finally:
        for server in servers:
            server.close()
    counts = per_epoch(batches)
    for epoch in range(2):
        assert sorted(i for (e, i) in counts if e == epoch) == list(range(SIZE))
    assert {b.stream for b in batches} == {"%s" % b.stream for b in batches} and len({b.stream for b in batches}) == 2
    assert "serving 23 samples of 45 (shard 0/2)" in servers[0].log


def test_one_server_feeds_two_trainers_distinct_batches(tmp_path, npz_source):
    size, batch = 40, 4  # 780 kB batches: kernel buffers cannot hide one trainer from the other
    source = npz_source(random_images(size, (3, 128, 128)))
    ports = [free_port(), free_port()]
    trainers = [BatchClient(bind="tcp://127.0.0.1:%d" % p, timeout_s=0.5, prefetch=1) for p in ports]
    # One batch a message: the trainers share the stream batch by batch (by default 10 of these
    # batches would travel together, and the 20 batches would be two messages).
    args = ["--source", source, "--batch-size", str(batch), "--epochs", "2", "--max-batches-per-message", "1"]
    for port in ports:
        args += ["--connect", "tcp://127.0.0.1:%d" % port]
    got = [[], []]
    with ServerProcess(args, tmp_path / "server.log") as server:
        deadline = time.monotonic() + 30
        while sum(map(len, got)) < 20 and time.monotonic() < deadline:
            for trainer, batches in zip(trainers, got):
                try:
                    batches.append(trainer.receive())
                except TimeoutError:
                    pass
        assert server.wait() == 0, server.log
    for trainer in trainers:
        trainer.close()
    assert got[0] and got[1]
    assert sorted(b.seq for batches in got for b in batches) == list(range(20))  # distinct, none lost
    counts = per_epoch(got[0] + got[1])
    for epoch in range(2):
        assert sorted(i for (e, i) in counts if e == epoch) == list(range(size))


def test_shard_from_hostname_and_bad_shards(tmp_path, source):
    result = run_server(["--source", source, "--shard", "2/2"])
    assert result.returncode == 2 and "shard 2/2: need 0 <= I < N" in result.stderr
    result = run_server(["--source", source, "--shard", "47/50"])
    assert result.returncode == 2 and "shard 47/50 of 45 samples is empty: use at most 45 shards" in result.stderr


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no metric %s in:\n%s" % (name, text))


def test_metrics_endpoint_counts_what_happens(tmp_path):
    db = write_lmdb(tmp_path / "db", random_images(SIZE, (3, 8, 8)), range(SIZE), encode=".png")
    corrupt_records(db, {7: b"junk"})
    port, metrics_port = free_port(), free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(BATCH),
            "--metrics-port", str(metrics_port), "--workers", "2"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            for _ in range(12):
                client.receive()
            os.kill(child_pids(server.process.pid)[0], signal.SIGKILL)
            for _ in range(12):
                client.receive()
            time.sleep(0.5)
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10).read().decode()
        assert server.stop() == 0
    assert metric(text, "zfeed_batches_sent_total") >= 24
    assert metric(text, "zfeed_samples_sent_total") == BATCH * metric(text, "zfeed_batches_sent_total")
    pixels_and_label = 3 * 8 * 8 + 4  # uint8 pixels, a float32 label
    assert metric(text, "zfeed_bytes_sent_total") == metric(text, "zfeed_batches_sent_total") * BATCH * pixels_and_label
    assert metric(text, "zfeed_worker_restarts_total") == 1
    assert metric(text, "zfeed_samples_skipped_total") >= 1
    assert metric(text, "zfeed_trainers_connected") == 1
    assert metric(text, "zfeed_queued_batches") >= 0 and metric(text, "zfeed_queued_bytes") >= 0
