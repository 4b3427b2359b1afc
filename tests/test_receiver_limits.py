"""BatchClient's bounds against what peers send: bad keys, floods of bad messages, unread batches.

Real sockets over tcp on 127.0.0.1; the server is a real process.
"""

import logging
import math
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq

from client_layer import BatchClient, NoDataError, wire
from client_layer.receiver import MAX_LOGGED_REJECTION_CAUSES, RECEIVE_BUFFER_BYTES
from harness.children import ServerProcess, free_port
from harness.datasets import random_images, write_npz
from server.sender import QUEUED_PER_TRAINER, SEND_BUFFER_BYTES
from server.tools.keygen import main as keygen
from zmtp_peer import endless_message

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    for name in ("server", "trainer"):
        assert keygen([str(folder), name]) == 0
    return folder


def truncate_key(path, keep):
    """Cut the key on each key line of ``path`` to ``keep`` characters, as a botched copy would."""
    lines = []
    for line in path.read_text().splitlines():
        if "-key" in line and '"' in line:
            name, key = line.split('"')[0], line.split('"')[1]
            line = '%s"%s"' % (name, key[:keep])
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damaged", ["trainer.key_secret", "server.key"])
def test_truncated_curve_key_is_refused_naming_the_file(keys, damaged):
    truncate_key(keys / damaged, 20)
    with pytest.raises(ValueError) as refused:
        BatchClient("tcp://127.0.0.1:1", timeout_s=1, curve_secret_key=str(keys / "trainer.key_secret"),
                    curve_server_key=str(keys / "server.key"))
    message = str(refused.value)
    assert str(keys / damaged) in message
    assert "is not a 40-character Z85 CURVE key (it has 20 characters)" in message
    assert "python -m server.tools.keygen" in message


def good_batch(seq, rows=4):
    return wire.encode_batch("peer", seq, {"data": np.zeros((rows, 3, 4, 4), np.uint8),
                                           "label": np.zeros(rows, np.float32)},
                             np.arange(rows), np.zeros(rows))


def test_a_flood_of_bad_messages_is_counted_and_each_cause_logged_once(caplog):
    port = free_port()
    context = zmq.Context()
    peer = context.socket(zmq.PUSH)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        with BatchClient(bind="tcp://127.0.0.1:%d" % port, timeout_s=10) as client:
            peer.connect("tcp://127.0.0.1:%d" % port)
            garbage = [[b"not msgpack \xc1"]] * 40 + [[b"\x93\x01\x02\x03"]] * 40
            # More distinct causes than are logged: each header names another wire version.
            garbage += [[wire.encode_header("peer", 0, [], np.zeros(0), np.zeros(0)).replace(
                b"\xa5zfeed" + bytes([wire.WIRE_VERSION]), b"\xa5zfeed" + bytes([0x10 + i]))] for i in range(MAX_LOGGED_REJECTION_CAUSES + 5)]
            for frames in garbage + [good_batch(7)]:
                peer.send_multipart(frames)
            with caplog.at_level(logging.WARNING, logger="zfeed.client"):
                batch = client.receive()
            assert batch.seq == 7 and client.rejected == len(garbage)
    finally:
        peer.close()
        context.term()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("header is not valid msgpack" in line for line in lines) == 1
    assert sum("header is a list, not a map" in line for line in lines) == 1
    assert len(lines) == MAX_LOGGED_REJECTION_CAUSES + 1  # then one line saying the rest is only counted
    assert "from now on they are only counted" in lines[-1]


def batches_sent(metrics_port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=5).read().decode()
    return int(float(next(line.split()[-1] for line in text.splitlines()
                           if line.startswith("zfeed_batches_sent_total"))))


@pytest.mark.parametrize("batches_per_message", [1, 4])
def test_a_stalled_trainer_holds_at_most_the_stated_bound_unread(tmp_path, batches_per_message):
    """A trainer that stops reading holds at most prefetch + QUEUED_PER_TRAINER + 2 messages
    in ZeroMQ's queues plus the two kernel buffers (Linux doubles what is asked): what a
    restarted trainer never sees. Small (MNIST-sized) batches make the buffers count."""
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(256, (1, 28, 28), seed=1), range(256))
    port, metrics_port = free_port(), free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "64", "--workers", "1",
            "--metrics-port", str(metrics_port), "--max-batches-per-message", str(batches_per_message)]
    read, prefetch = 20, 4
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20, prefetch=prefetch) as client:
            batches = [client.receive() for _ in range(read)]
            sent, deadline = -1, time.monotonic() + 20
            while sent != batches_sent(metrics_port):  # until the server can send no more
                assert time.monotonic() < deadline, "the server kept sending to a trainer that stopped reading"
                sent = batches_sent(metrics_port)
                time.sleep(1.0)
        server.stop()
    kernel_buffers = 2 * RECEIVE_BUFFER_BYTES + 2 * SEND_BUFFER_BYTES
    assert "(%d batches per message)" % batches_per_message in server.log
    message_bytes = batches[-1].wire_bytes * batches_per_message
    bound = batches_per_message * (prefetch + QUEUED_PER_TRAINER + 2 + math.ceil(kernel_buffers / message_bytes))
    assert 0 < sent - read <= bound, (sent, read, bound)


def rss_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def test_an_endless_multipart_message_cannot_grow_the_trainer_past_its_limit():
    """Issue 16.4: ZMQ_MAXMSGSIZE bounds each frame only; the guard bounds the whole message.
    A binding trainer with max_batch_mb 64 faces 768 MB of one endless message while a
    well-behaved peer keeps sending batches: its RSS stays within the limit and it keeps
    receiving."""
    port, max_batch = free_port(), 64 << 20
    context = zmq.Context()
    server = context.socket(zmq.PUSH)
    server.setsockopt(zmq.LINGER, 0)
    stop, cuts = threading.Event(), []
    with BatchClient(bind="tcp://127.0.0.1:%d" % port, timeout_s=10, max_batch_bytes=max_batch) as client:
        baseline, peak = rss_bytes(), 0
        attacker = threading.Thread(target=lambda: cuts.append(endless_message(port, 768 << 20, stop)))
        attacker.start()
        try:
            server.connect("tcp://127.0.0.1:%d" % port)
            received, seq = 0, 0
            client.timeout_s = 0.2
            while attacker.is_alive():
                try:  # a cut also costs the batches in flight on the good connection
                    server.send_multipart(good_batch(seq), flags=zmq.NOBLOCK)
                    seq += 1
                except zmq.Again:
                    pass
                try:
                    client.receive()
                    received += 1
                except NoDataError:
                    pass
                peak = max(peak, rss_bytes() - baseline)
                assert peak < 3 * max_batch, "RSS grew by %d MB" % (peak >> 20)
        finally:
            stop.set()
            attacker.join(30)
            server.close()
            context.term()
    assert cuts and cuts[0] >= 2 and client._guard.cuts >= 2  # it came back and was cut again
    assert received > 10
    assert peak < 2 * max_batch, "RSS grew by %d MB" % (peak >> 20)
