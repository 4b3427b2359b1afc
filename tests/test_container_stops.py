"""Each service of docker-compose.yml, stopped as `docker compose stop` stops it, over and over, in
every state where it could hang: it must exit 0 well within its grace period.

A data server runs from its image with the service's environment, read-only
root, /tmp tmpfs and the demo's data volume read-only, on an internal
network, dialling ``trainer`` as in the compose file. The peer called
``trainer`` is a container of the trainer image with a ZeroMQ PULL socket.
States:

- importing: the server's stop handlers are in place and its modules are
  being imported (OpenCV not loaded yet). As PID 1 a process gets no signal
  it has no handler for, so this stop used to be dropped and the container
  killed at the end of its grace period (server/__main__.py);
- opening the source: a dataset whose factory sits in one C call for 20 s,
  as listing a large LMDB does (NOTE [ Signals during start-up ]);
- serving: the peer reads every batch;
- peer gone: the peer read a few batches and its container is gone, so its
  name no longer resolves. This is where stops took 37-40 s and were
  SIGKILLed: ZeroMQ's I/O thread sat in a 30-40 s lookup of the name, and
  closing ZeroMQ waited for it (NOTE [ Shutdown protocol ]);
- never read: the peer connects and never reads, so batches stay queued
  (large float32 batches fill the socket buffers at once);
- mid-batch: the workers are inside a batch (each sample takes 0.3 s).

The trainer runs the compose service's command in its image, under an init
as ``init: true`` gives it, its layers bound where the servers dial in
(NOTE [ SIGTERM in the trainer ] in demo/train.py). States: starting up
(its handler in place, Caffe not imported yet), waiting for data (no server
yet), training (both servers feeding it), server gone (both servers
removed while it trains: it waits for data).

Every stop must exit 0 within Docker's default grace period (10 s, at most
the services' own) without the server's shutdown deadline having to fire.
"""

import itertools
import re
import signal
import time

import pytest

import container_engine
from container_engine import (Network, command_pid, inspect, logs, podman, remove, run_container, server_metrics,
                              state, timed_stop, wait_for_log, wait_serving)
from deploy_support import compose_config, metric
from harness.children import has_loaded, wait_for_handler

pytestmark = pytest.mark.containers
built_images = container_engine.built_images

DOCKER_DEFAULT_GRACE_S = 10
ROUNDS = 3  # per service and state: 18 stops per server service, 12 of the trainer
STATE_DEADLINE_S = 60
LAST_SERVER_IMPORT = "cv2"  # OpenCV's extension module, loaded last of the large ones (about 0.5 s in)
CAFFE_EXTENSION = "_caffe"
TRAINER_ITERATIONS = "100000"  # training outlasts every stop

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
import hashlib
import sys
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

def make_slowly():
    """Opening a source that sits in one C call for about 20 s, as listing a large LMDB does."""
    print("slow_dataset: opening", file=sys.stderr, flush=True)
    hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 60_000_000)
    return Slow()
'''

_names = itertools.count()


@pytest.fixture(scope="module")
def demo_volume(built_images):
    """The demo's data set and prototxts in a volume, made as the dataset service makes them, with
    training long enough to outlast every stop."""
    name = "zfeed-test-demo-%d" % time.time()
    folder, *args = compose_config()["services"]["dataset"]["command"]
    args[args.index("--iterations") + 1] = TRAINER_ITERATIONS
    podman("volume", "create", name)
    try:
        podman("run", "--rm", "--network", "none", "-v", "%s:%s" % (name, folder), "zfeed-demo-dataset", folder, *args,
               timeout=300)
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


def start_server(service: dict, network: Network, volume: str, env: dict, mounts=(), serving=True,
                 hosts=()) -> str:
    """A container of the server service; with ``serving``, once it serves. ``hosts``: NAME:IP entries."""
    options = ["--read-only", "--tmpfs", "/tmp", "-v", "%s:/demo:ro" % volume]
    for host in hosts:
        options += ["--add-host", host]
    for key, value in dict(service["environment"], **env).items():
        options += ["--env", "%s=%s" % (key, value)]
    for mount in mounts:
        options += ["-v", mount]
    name = run_container("zfeed-server", name="zfeed-server-%d" % next(_names), network=network, options=options)
    if serving:
        wait_serving(name)
    return name


def command_with_handler(container: str) -> int:
    """The host pid of the container's command, once it has a SIGTERM handler."""
    pid = command_pid(container)
    wait_for_handler(pid, signal.SIGTERM, STATE_DEADLINE_S)
    return pid


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
@pytest.mark.parametrize("situation", ["importing", "opening the source", "serving", "peer gone", "never read",
                                       "mid-batch"])
def test_server_exits_0_within_the_grace_period(service_name, situation, demo_volume, slow_dataset):
    service = compose_config()["services"][service_name]
    grace_s = float(service["stop_grace_period"].rstrip("s"))
    assert grace_s >= DOCKER_DEFAULT_GRACE_S
    (endpoint,) = service["environment"]["ZFEED_CONNECT"].split()
    stopped_while_importing = 0
    with Network() as network:
        for _round in range(ROUNDS):
            peer, server, env, mounts = None, None, {}, []
            starting = situation in ("importing", "opening the source")
            try:
                if situation in ("mid-batch", "opening the source"):
                    factory = "make" if situation == "mid-batch" else "make_slowly"
                    env = {"ZFEED_SOURCE": "python:/slow/slow_dataset.py:%s" % factory, "ZFEED_MEAN_FILE": ""}
                    mounts = ["%s:/slow:ro" % slow_dataset]
                elif situation == "never read":
                    env = {"ZFEED_BATCH_SIZE": "2048", "ZFEED_WIRE_FORMAT": "float32"}
                if situation not in ("mid-batch", "opening the source"):
                    peer = start_peer({"peer gone": "gone", "never read": "never"}.get(situation, "read"),
                                      endpoint, network)
                server = start_server(service, network, demo_volume, env, mounts, serving=not starting)
                if situation == "importing":
                    pid = command_with_handler(server)
                    stopped_while_importing += not has_loaded(pid, LAST_SERVER_IMPORT)
                elif situation == "opening the source":
                    wait_for_log(server, "slow_dataset: opening")
                elif situation == "serving":
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
                print("%s, %s: exit %s after %.2f s" % (service_name, situation, code, took))
                assert code == 0 and took < DOCKER_DEFAULT_GRACE_S, "exit %s after %.1f s:\n%s" % (
                    code, took, output[-3000:])
                assert "shutdown did not finish" not in output, output[-3000:]
                if starting:
                    assert "SIGTERM received during start-up: stopping" in output, output[-3000:]
            finally:
                remove(*[name for name in (peer, server) if name])
    if situation == "importing":  # the state this test is for: seen at least once
        assert stopped_while_importing > 0, "every stop came after the server's imports"


def start_trainer(service: dict, network: Network, volume: str) -> str:
    """A container of the trainer service: its command, volume and init, reachable as ``trainer``."""
    assert service["init"] is True
    (mount,) = service["volumes"]
    return run_container("zfeed-trainer", *service["command"], name="zfeed-trainer-%d" % next(_names),
                         network=network, options=["--init", "--network-alias", "trainer",
                                                   "-v", "%s:%s" % (volume, mount.split(":")[1])])


@pytest.mark.parametrize("situation", ["starting up", "waiting for data", "training", "server gone"])
def test_trainer_exits_0_within_the_grace_period(situation, demo_volume):
    services = compose_config()["services"]
    trainer_service = services["trainer"]
    assert "stop_grace_period" not in trainer_service  # Docker's default
    stopped_before_caffe = 0
    with Network() as network:
        for _round in range(ROUNDS):
            trainer, servers = None, []
            try:
                trainer = start_trainer(trainer_service, network, demo_volume)
                if situation == "starting up":
                    pid = command_with_handler(trainer)
                    stopped_before_caffe += not has_loaded(pid, CAFFE_EXTENSION)
                elif situation == "waiting for data":
                    wait_for_log(trainer, "waiting for data for")
                else:
                    # The servers find the trainer through /etc/hosts, not Podman's DNS: with containers
                    # and networks made and removed in quick succession, its answers for a new container
                    # were seen to lag, leaving a server without its trainer for longer than the
                    # layer's 30 s timeout. Stopping the trainer is tested here, not Podman's DNS.
                    address = inspect(trainer)["NetworkSettings"]["Networks"][network.name]["IPAddress"]
                    servers = [start_server(services[name], network, demo_volume, {},
                                            hosts=["trainer:%s" % address])
                               for name in ("trainserver", "testserver")]
                    try:
                        wait_for_log(trainer, "(mean of the last")  # a loss line: training
                    except AssertionError as exc:
                        raise AssertionError("%s\nthe servers' logs:\n%s" % (
                            exc, "\n".join(logs(server)[-2000:] for server in servers))) from None
                    if situation == "server gone":
                        waits = len(re.findall("waiting for data for", logs(trainer)))
                        remove(*servers)
                        deadline = time.monotonic() + STATE_DEADLINE_S
                        while len(re.findall("waiting for data for", logs(trainer))) == waits:
                            assert state(trainer)["Running"] and time.monotonic() < deadline, logs(trainer)[-3000:]
                            time.sleep(0.3)
                code, took = timed_stop(trainer, DOCKER_DEFAULT_GRACE_S)
                output = logs(trainer)
                print("trainer, %s: exit %s after %.2f s" % (situation, code, took))
                assert code == 0 and took < DOCKER_DEFAULT_GRACE_S, "exit %s after %.1f s:\n%s" % (
                    code, took, output[-3000:])
                assert "train.py: SIGTERM received: stopping" in output, output[-3000:]
                if situation in ("training", "server gone"):
                    assert re.search(r"stopped by SIGTERM after \d+ of %s iterations" % TRAINER_ITERATIONS,
                                     output), output[-3000:]
                elif situation == "waiting for data":
                    assert "stopped by SIGTERM while setting up the nets" in output, output[-3000:]
                assert "Traceback" not in output, output[-3000:]
            finally:
                remove(*[name for name in [trainer] + servers if name])
    if situation == "starting up":
        assert stopped_before_caffe > 0, "every stop came after Caffe was imported"
