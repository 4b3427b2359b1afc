"""The server's shutdown is bounded (NOTE [ Shutdown protocol ] in server/supervisor.py).

The stop that took 37-40 s in containers, reproduced without them: the
server dials a peer by a name whose lookup never answers (a network
namespace whose only resolver, on its own loopback, reads queries and
drops them), so ZeroMQ's I/O thread sits in getaddrinfo and closing
ZeroMQ waits for it. And the deadline itself, on a shutdown step that hangs.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from harness import netns
from harness.children import ChildProcess, ServerProcess, child_env
from server.shutdown_deadline import SHUTDOWN_DEADLINE_S

pytestmark = pytest.mark.integration

LOOKUP_TIMEOUT_S = 30  # the resolver's wait: far longer than any stop may take
NAMESERVER = '''
import socket
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 53))
server.settimeout(120)
while True:
    server.recvfrom(512)  # and never answer
'''
TINY_DATASET = '''
import numpy as np

class Tiny:
    def __len__(self):
        return 64
    def __getitem__(self, i):
        return {"data": np.full((1, 4, 4), i, np.uint8), "label": i}

def make():
    return Tiny()
'''


@pytest.fixture
def silent_dns_namespace(tmp_path):
    """A network namespace with loopback only, whose resolv.conf names a resolver that never answers."""
    reason = netns.available()
    if reason:
        pytest.fail(reason, pytrace=False)
    name = "zfdns%s" % uuid.uuid4().hex[:8]
    config = "/etc/netns/%s" % name
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        os.makedirs(config)
        with open(config + "/resolv.conf", "w") as resolv:
            resolv.write("nameserver 127.0.0.1\noptions timeout:%d attempts:1\n" % LOOKUP_TIMEOUT_S)
        with ChildProcess(["ip", "netns", "exec", name, sys.executable, "-c", NAMESERVER],
                          tmp_path / "nameserver.log"):
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)
        subprocess.run(["rm", "-rf", config], timeout=10)


def test_a_stop_does_not_wait_for_a_peer_name_that_no_longer_resolves(tmp_path, silent_dns_namespace):
    module = tmp_path / "tiny.py"
    module.write_text(TINY_DATASET)
    args = ["--source", "python:%s:make" % module, "--batch-size", "4", "--workers", "1",
            "--connect", "tcp://trainer:5555", "--metrics-port", "0"]
    with ServerProcess(args, tmp_path / "server-in-namespace.log",
                       prefix=["ip", "netns", "exec", silent_dns_namespace]) as server:
        server.wait_ready()
        time.sleep(1)  # ZeroMQ's I/O thread is now in the lookup of "trainer"
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout_s=LOOKUP_TIMEOUT_S + 15) == 0, server.log
        took = time.monotonic() - started
        assert took < SHUTDOWN_DEADLINE_S, "the stop took %.1f s:\n%s" % (took, server.log)
        assert "closing ZeroMQ did not finish within 3 s" in server.log, server.log


def test_the_deadline_ends_a_shutdown_step_that_hangs(tmp_path):
    script = textwrap.dedent('''
        import logging, time
        from server.shutdown_deadline import ShutdownDeadline
        logging.basicConfig(level=logging.INFO)
        deadline = ShutdownDeadline(1.0)
        deadline.start(status=0)
        deadline.step("stopping the loader workers")
        time.sleep(60)  # a step that hangs
        ''')
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=child_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and time.monotonic() - started < 10, result.stderr
    assert ("shutdown did not finish within 1 s of its start (still stopping the loader workers): "
            "exiting now with status 0") in result.stderr
