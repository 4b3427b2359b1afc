"""Issue 16.4, the server's side: what a hostile peer of the PUSH socket can make the server hold.

A real server process over tcp on 127.0.0.1; the peer speaks raw ZMTP 3 as a PULL socket
(greeting and READY, as a trainer does) and then sends frames flagged "more" that never end.
"""

import threading
import time

import pytest

from client_layer import BatchClient
from harness.datasets import random_images
from harness.children import ServerProcess, free_port
from zmtp_peer import endless_message, more_frames

pytestmark = pytest.mark.integration

ATTACK_S = 10.0


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


@pytest.mark.parametrize("chunk, budget, logged", [
    (more_frames(8 << 20), 1536 << 20, False),  # 8 MiB frames: refused by ZMQ_MAXMSGSIZE, silently
    (more_frames(0, 65536), 256 << 20, True),   # empty frames: 2 bytes on the wire, a 64-byte zmq_msg_t each
], ids=["8MiB-frames", "empty-frames"])
def test_an_endless_message_to_the_server_cannot_grow_it(tmp_path, npz_source, chunk, budget, logged):
    """The server's RSS stays within 100 MB of where it started while a peer sends up to
    ``budget`` bytes of one endless message for ``ATTACK_S``, reconnecting whenever it is cut,
    and a real trainer keeps receiving all along."""
    source = npz_source(random_images(256, (3, 32, 32), seed=3))
    port = free_port()
    endpoint = "tcp://127.0.0.1:%d" % port
    args = ["--source", source, "--bind", endpoint, "--batch-size", "16", "--workers", "1"]
    stop, cuts = threading.Event(), []
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        pid = server.process.pid
        with BatchClient(endpoint, timeout_s=10) as client:
            client.receive()
            baseline, peak, received = rss_bytes(pid), 0, 0
            attacker = threading.Thread(
                target=lambda: cuts.append(endless_message(port, budget, stop, b"PULL", chunk)))
            attacker.start()
            try:
                deadline = time.monotonic() + ATTACK_S
                while attacker.is_alive() and time.monotonic() < deadline:
                    client.receive()
                    received += 1
                    peak = max(peak, rss_bytes(pid) - baseline)
                    assert peak < 100 << 20, "the server's RSS grew by %d MB" % (peak >> 20)
            finally:
                stop.set()
                attacker.join(30)
            client.receive()
        server.stop()
    assert cuts and cuts[0] >= 2, cuts  # it was cut, came back, and was cut again
    assert received > 10
    assert ("closed a trainer connection" in server.log) == logged, server.log
