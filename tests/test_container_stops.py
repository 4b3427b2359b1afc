"""Each data server service of docker-compose.yml, stopped as `docker compose stop` stops it, over
and over, in every state where a server could hang: it must exit 0 well within its grace period.

The server runs from its image with the service's environment, read-only
root, /tmp tmpfs and the demo's data volume read-only, on an internal
network, dialling ``trainer`` as in the compose file. The peer called
``trainer`` is a container of the trainer image with a ZeroMQ PULL socket.
States:

- serving: the peer reads every batch;
- peer gone: the peer read a few batches and its container is gone, so its
  name no longer resolves. This is where stops took 37-40 s and were
  SIGKILLed: ZeroMQ's I/O thread sat in a 30-40 s lookup of the name, and
  closing ZeroMQ waited for it (NOTE [ Shutdown protocol ]);
- never read: the peer connects and never reads, so batches stay queued
  (large float32 batches fill the socket buffers at once);
- mid-batch: the workers are inside a batch (each sample takes 0.3 s).

Every stop must exit 0 within Docker's default grace period (10 s, less
than the services' 15 s) without the shutdown deadline having to fire.
"""

import itertools
import time

import pytest

import container_engine
from container_engine import (Network, logs, podman, remove, run_container, server_metrics, state, timed_stop,
                              wait_for_log)
from deploy_support import compose_config, metric

pytestmark = pytest.mark.containers
built_images = container_engine.built_images

DOCKER_DEFAULT_GRACE_S = 10
ROUNDS = 3  # per service and state: 4 states, 12 stops per service
STATE_DEADLINE_S = 60

PEER = '''
import sys, time, zmq
mode, endpoint = sys.argv[1], sys.argv[2]
socket = zmq.Context().socket(zmq.PULL)
socket.setsockopt(zmq.LINGER, 0)
socket.setsockopt(zmq.RCVTIMEO, 120000)
socket.setsockopt(zmq.RCVBUF, 65536)
socket.bind(endpoint)
if mode == "never":
    time.sleep(600)
for _ in range(5 if mode == "gone" else 10 ** 6):
    socket.recv_multipart()
'''

SLOW_DATASET = '''
import time
import numpy as np

class Slow:
    """Digits-shaped samples that take 0.3 s each, so that workers are inside a batch for seconds."""
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        time.sleep(0.3)
        return {"data": np.full((1, 8, 8), i % 256, np.uint8), "label": i % 10}

def make():
    return Slow()
'''

_names = itertools.count()


@pytest.fixture(scope="module")
def demo_volume(built_images):
    """The demo's data set in a volume, built by the dataset service's image."""
    name = "zfeed-test-demo-%d" % time.time()
    podman("volume", "create", name)
    try:
        podman("run", "--rm", "--network", "none", "-v", "%s:/demo" % name, "zfeed-demo-dataset", "/demo", timeout=300)
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    folder.chmod(0o755)
    (folder / "slow_dataset.py").write_text(SLOW_DATASET)
    (folder / "slow_dataset.py").chmod(0o644)
    return folder


def wait_until(container: str, what: str, check) -> None:
    deadline = time.monotonic() + STATE_DEADLINE_S
    while not check(server_metrics(container)):
        assert state(container)["Running"], "%s exited before %s:\n%s" % (container, what, logs(container)[-3000:])
        assert time.monotonic() < deadline, "%s: no %s in %d s:\n%s" % (container, what, STATE_DEADLINE_S,
                                                                        logs(container)[-3000:])
        time.sleep(0.3)


def start_peer(mode: str, endpoint: str, network: Network) -> str:
    port = endpoint.rpartition(":")[2]
    return run_container("zfeed-trainer", "-c", PEER, mode, "tcp://*:%s" % port, name="zfeed-peer-%d" % next(_names),
                         network=network, options=["--network-alias", "trainer", "--entrypoint", "python"])


def start_server(service: dict, network: Network, volume: str, env: dict, mounts=()) -> str:
    options = ["--read-only", "--tmpfs", "/tmp", "-v", "%s:/demo:ro" % volume]
    for key, value in dict(service["environment"], **env).items():
        options += ["--env", "%s=%s" % (key, value)]
    for mount in mounts:
        options += ["-v", mount]
    name = run_container("zfeed-server", name="zfeed-server-%d" % next(_names), network=network, options=options)
    wait_for_log(name, " serving ")
    return name


def connected_and_sent(count):
    return lambda text: (metric(text, "zfeed_trainers_connected") == 1
                         and metric(text, "zfeed_batches_sent_total") >= count)


def queue_stuck(container: str) -> None:
    """Wait until the server has batches for its peer that it cannot hand over: sends stopped."""
    wait_until(container, "connection", connected_and_sent(1))
    sent = None
    deadline = time.monotonic() + STATE_DEADLINE_S
    while True:
        now = metric(server_metrics(container), "zfeed_batches_sent_total")
        if now == sent:
            return
        assert time.monotonic() < deadline, "%s still sends to a peer that never reads" % container
        sent = now
        time.sleep(2)


@pytest.mark.parametrize("service_name", ["trainserver", "testserver"])
@pytest.mark.parametrize("situation", ["serving", "peer gone", "never read", "mid-batch"])
def test_server_exits_0_within_the_grace_period(service_name, situation, demo_volume, slow_dataset):
    service = compose_config()["services"][service_name]
    grace_s = float(service["stop_grace_period"].rstrip("s"))
    assert grace_s >= DOCKER_DEFAULT_GRACE_S
    (endpoint,) = service["environment"]["ZFEED_CONNECT"].split()
    with Network() as network:
        for _round in range(ROUNDS):
            peer, server, env, mounts = None, None, {}, []
            try:
                if situation == "mid-batch":
                    env = {"ZFEED_SOURCE": "python:/slow/slow_dataset.py:make", "ZFEED_MEAN_FILE": ""}
                    mounts = ["%s:/slow:ro" % slow_dataset]
                elif situation == "never read":
                    env = {"ZFEED_BATCH_SIZE": "2048", "ZFEED_WIRE_FORMAT": "float32"}
                if situation != "mid-batch":
                    peer = start_peer({"peer gone": "gone", "never read": "never"}.get(situation, "read"),
                                      endpoint, network)
                server = start_server(service, network, demo_volume, env, mounts)
                if situation == "serving":
                    wait_until(server, "batches taken", connected_and_sent(5))
                elif situation == "peer gone":
                    podman("wait", peer, timeout=STATE_DEADLINE_S)
                    remove(peer)  # its name no longer resolves
                    wait_until(server, "disconnection", lambda text: metric(text, "zfeed_trainers_connected") == 0)
                    time.sleep(1)  # reconnecting: looking the name up again
                elif situation == "never read":
                    queue_stuck(server)
                else:
                    wait_until(server, "busy worker", lambda text: metric(text, "zfeed_workers_busy") >= 1)
                code, took = timed_stop(server, grace_s)
                output = logs(server)
                assert code == 0 and took < DOCKER_DEFAULT_GRACE_S, "exit %s after %.1f s:\n%s" % (
                    code, took, output[-3000:])
                assert "shutdown did not finish" not in output, output[-3000:]
            finally:
                remove(*[name for name in (peer, server) if name])
