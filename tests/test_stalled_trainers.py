"""Issue 16.6: trainers that connect and never read cost the others nothing beyond their own share.

A real server over tcp on 127.0.0.1; the stalled trainers are raw pyzmq PULL sockets that
never receive; the healthy one is a BatchClient.
"""

import math
import time

import pytest
import zmq

from client_layer import BatchClient
from harness.children import ServerProcess, free_port
from harness.datasets import random_images
from server.slot_pool import PINNED_PER_TRAINER

pytestmark = pytest.mark.integration

STALLED = 5


def stalled_trainers(context, endpoint, count):
    """``count`` PULL sockets that connect and never read (a receive queue of one message)."""
    sockets = []
    for _ in range(count):
        socket = context.socket(zmq.PULL)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 1)
        socket.setsockopt(zmq.RCVBUF, 64 * 1024)
        socket.connect(endpoint)
        sockets.append(socket)
    return sockets


def server_args(source, endpoint, max_inflight_mb):
    return ["--source", source, "--bind", endpoint, "--batch-size", "64", "--workers", "1",
            "--max-inflight-mb", str(max_inflight_mb)]


def test_stalled_trainers_do_not_starve_a_healthy_one(tmp_path, npz_source):
    """Batches of 9.6 MB, one worker: 10 slots of working set. Five stalled trainers pin
    what ZeroMQ queued for them; the healthy trainer still gets batches at a steady rate."""
    source = npz_source(random_images(128, (3, 224, 224), seed=2))
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    args = server_args(source, endpoint, 512)
    context = zmq.Context()
    stalled = []
    try:
        with ServerProcess(args, tmp_path / "server.log") as server:
            server.wait_ready()
            stalled = stalled_trainers(context, endpoint, STALLED)
            time.sleep(3.0)  # the stalled trainers take what ZeroMQ gives them
            with BatchClient(endpoint, timeout_s=10) as client:
                started = time.monotonic()
                received = [client.receive() for _ in range(20)]
                elapsed = time.monotonic() - started
            server.stop()
    finally:
        for socket in stalled:
            socket.close(0)
        context.term()
    assert len(received) == 20 and elapsed < 15, elapsed
    assert "over the --max-inflight-mb budget" not in server.log, server.log


def test_trainers_beyond_the_budget_are_named(tmp_path, npz_source):
    """80 MB holds 8 slots of 9.6 MB: the workers' working set, and no trainer's share. A single
    trainer starves no one; the second one connected is over the budget, and the log says so."""
    source = npz_source(random_images(128, (3, 224, 224), seed=2))
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    context = zmq.Context()
    stalled = []
    try:
        with ServerProcess(server_args(source, endpoint, 80), tmp_path / "server.log") as server:
            server.wait_ready()
            stalled = stalled_trainers(context, endpoint, 1)
            time.sleep(1.0)
            assert "over the --max-inflight-mb budget" not in server.log
            stalled += stalled_trainers(context, endpoint, 1)
            server.wait_for_log("trainer 2 is over the --max-inflight-mb budget", timeout_s=10)
            server.stop()
    finally:
        for socket in stalled:
            socket.close(0)
        context.term()
    slot_mb = (64 * 3 * 224 * 224 + 64 * 4) / 2**20
    needed_mb = math.ceil((8 + 2 * PINNED_PER_TRAINER) * slot_mb)  # the workers' 8 and 2 trainers' shares
    assert "--max-inflight-mb %d would cover 2 trainers" % needed_mb in server.log, server.log
