"""The images built from the repository's Dockerfiles and run in containers, as users run them.

Podman builds them (tests/container_engine.py) and runs them: the compose
demo through Debian's docker-compose on Podman's Docker API, with
``--scale trainserver=3``; the Kubernetes manifests' pods with every
setting of their manifests (tests/k8s_pods.py). Networks are internal
bridges. Stops under every state where a server could hang are in
test_container_stops.py.
"""

import re
import time

import lmdb
import pytest

import container_engine
from client_layer import BatchClient
from container_engine import (Compose, Network, PodmanService, exec_in, finished_at, health_status, inspect, logs,
                              podman, server_metrics, serving, state, timed_stop, wait_for_log)
from deploy_support import REPO, compose_config, k8s_by_kind, metric, pod_spec
from k8s_pods import Pod

pytestmark = pytest.mark.containers
built_images = container_engine.built_images

IMAGE_USER, IMAGE_UID = "zfeed", "10001"
# What the images weigh now (MB, podman's count), with room for a package's next release.
SIZE_LIMITS_MB = {"zfeed-server": 480, "zfeed-demo-dataset": 700, "zfeed-trainer": 660}
PYTHONS = {"zfeed-server": "3.11", "zfeed-demo-dataset": "3.11", "zfeed-trainer": "3.9"}
TRAINER_DEADLINE_S = 600
EPOCH_DEADLINE_S = 90
DEMO_ITERATIONS = 3000  # the compose default of 300 is over in seconds, before the servers can be looked at


@pytest.fixture(scope="module")
def podman_service(tmp_path_factory):
    with PodmanService(tmp_path_factory.mktemp("podman")) as service:
        yield service


def assert_runs_as_declared(container: str) -> None:
    """The image's user, a read-only root file system, and the server itself as PID 1."""
    assert exec_in(container, "id", "-u").stdout.strip() == IMAGE_UID
    denied = exec_in(container, "touch", "/opt/zfeed/written", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    assert inspect(container)["HostConfig"]["ReadonlyRootfs"] is True
    pid1 = exec_in(container, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[:3] == ["python", "-m", "server"], pid1


def test_images_are_lean_non_root_and_on_their_pythons(built_images):
    sizes = {image.name: image.size_mb for image in built_images}
    assert set(sizes) == set(SIZE_LIMITS_MB)
    for name, size in sizes.items():
        assert size < SIZE_LIMITS_MB[name], "%s weighs %.0f MB" % (name, size)
        assert inspect(name, "image")["Config"]["User"] == IMAGE_USER
        version = podman("run", "--rm", "--network", "none", "--entrypoint", "python", name, "-c",
                         "import os, sys; print(os.getuid(), '%d.%d' % sys.version_info[:2])").stdout.split()
        assert version == [IMAGE_UID, PYTHONS[name]], (name, version)
    caffe, layer = podman("run", "--rm", "--network", "none", "--entrypoint", "python", "zfeed-trainer", "-c",
                          "import caffe, client_layer; print(caffe.__file__, client_layer.__file__)").stdout.split()
    assert caffe.startswith("/opt/venv/") and layer == "/opt/zfeed/client_layer/__init__.py"


def test_server_container_refuses_a_bad_variable_with_status_2_naming_it(built_images):
    result = podman("run", "--rm", "--network", "none", "-e", "ZFEED_SOURCE=npz:/data/a.npz", "-e",
                    "ZFEED_SHUFFLE=maybe", "zfeed-server", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ZFEED_SHUFFLE=maybe: expected 1/true/yes or 0/false/no" in result.stderr, result.stderr


def test_compose_demo_trains_to_pass_with_three_train_servers_then_stops_them(built_images, podman_service,
                                                                                tmp_path):
    services = compose_config()["services"]
    grace_s = float(services["trainserver"]["stop_grace_period"].rstrip("s"))
    compose = Compose(podman_service, "zfeedtest%d" % (time.time() * 1000 % 1e9),
                      REPO / "tests" / "compose-internal.yml", {"ZFEED_DEMO_ITERATIONS": str(DEMO_ITERATIONS)})
    try:
        compose("up", "--detach", "--no-build", "--scale", "trainserver=3", timeout=600)
        (dataset,) = compose.containers("dataset")
        assert state(dataset)["ExitCode"] == 0, logs(dataset)
        (trainer,) = compose.containers("trainer")
        trainservers = compose.containers("trainserver")
        assert len(trainservers) == 3
        servers = trainservers + compose.containers("testserver")
        # Every replica dials in to the trainer, which takes batches from all of them (the demo trains
        # longer here, so that this is seen while it trains).
        connected = set()
        deadline = time.monotonic() + 120
        while connected != set(servers) and state(trainer)["Running"] and time.monotonic() < deadline:
            for server in set(servers) - connected:
                if serving(server):
                    text = server_metrics(server)
                    if metric(text, "zfeed_trainers_connected") == 1 and metric(text, "zfeed_batches_sent_total") > 0:
                        connected.add(server)
            time.sleep(0.5)
        assert connected == set(servers), "servers that reached the trainer: %s of %s" % (connected, servers)
        for server in servers:
            assert_runs_as_declared(server)
            assert health_status(server) == "healthy", logs(server)
        # docker-compose.yml's promise: each replica serves its own order (ZFEED_SEED=hostname, which the
        # server reads itself: the image's command has no arguments).
        seeds = {server: re.search(r"; seed (\d+);", logs(server)).group(1) for server in trainservers}
        assert len(set(seeds.values())) == 3, seeds

        podman("wait", trainer, timeout=TRAINER_DEADLINE_S)
        output = logs(trainer)
        assert state(trainer)["ExitCode"] == 0 and "result: PASS" in output, output[-4000:]
        # The trainer is gone and its name no longer resolves: the state of the 37-40 s stops.
        sent = time.time()
        compose("stop", timeout=grace_s + 60)
        for server in servers:
            took = finished_at(server) - sent
            assert state(server)["ExitCode"] == 0 and took < grace_s, "%s: exit %s after %.1f s\n%s" % (
                server, state(server)["ExitCode"], took, logs(server)[-3000:])
    finally:
        compose.down()


def test_kubernetes_pods_run_as_declared_and_the_shards_serve_each_sample_once_per_epoch(built_images):
    statefulset = k8s_by_kind("StatefulSet")["zfeed-server"]
    service = statefulset["spec"]["serviceName"]
    grace_s = pod_spec(statefulset)["terminationGracePeriodSeconds"]
    (job,) = k8s_by_kind("Job").values()
    with Network() as network:
        pods = []
        try:
            servers = [Pod("zfeed-server-%d" % i, pod_spec(statefulset), network)
                       for i in range(statefulset["spec"]["replicas"])]
            test_server = Pod("zfeed-test-server-0", pod_spec(k8s_by_kind("StatefulSet")["zfeed-test-server"]),
                              network)
            pods += servers + [test_server]
            for pod in pods:
                pod.create()
                pod.run_init_containers()
                pod.start_containers()
            for ordinal, pod in enumerate(servers):
                container = pod.containers["server"]
                wait_for_log(container, "(shard %d/%d)" % (ordinal, len(servers)))
                assert_runs_as_declared(container)
                assert health_status(container) == "healthy"
            # Receive as the trainer Job's train layer does, from every shard.
            size = count_records(inspect(servers[0].volumes["data"], "volume")["Mountpoint"] + "/train_lmdb")
            port = pod_spec(statefulset)["containers"][0]["ports"][0]["containerPort"]
            addresses = ["tcp://%s:%d" % (pod.ip_address(), port) for pod in servers]
            seen = set()
            deadline = time.monotonic() + EPOCH_DEADLINE_S
            with BatchClient(addresses, timeout_s=30) as client:
                while sum(1 for epoch, _ in seen if epoch == 0) < size:
                    batch = client.receive()
                    for pair in zip(batch.epochs.tolist(), batch.indices.tolist()):
                        assert pair not in seen, "sample %d of epoch %d delivered twice" % pair[::-1]
                        seen.add(pair)
                    assert time.monotonic() < deadline, "epoch 0 incomplete after %d s" % EPOCH_DEADLINE_S
            assert sorted(index for epoch, index in seen if epoch == 0) == list(range(size))

            # The trainer Job, its layers connecting to each pod's name as the headless Services give them.
            hosts = {"%s.%s" % (pod.name, service): pod.ip_address() for pod in servers}
            hosts["zfeed-test-server-0.zfeed-test-server"] = test_server.ip_address()
            trainer = Pod("zfeed-trainer", pod_spec(job), network, hosts)
            pods.append(trainer)
            trainer.create()
            trainer.run_init_containers()
            (name,) = trainer.start_containers().values()
            assert exec_in(name, "id", "-u").stdout.strip() == IMAGE_UID
            podman("wait", name, timeout=TRAINER_DEADLINE_S)
            assert state(name)["ExitCode"] == 0 and "result: PASS" in logs(name), logs(name)[-4000:]

            for pod in servers + [test_server]:  # the kubelet: SIGTERM, SIGKILL after the grace period
                code, took = timed_stop(pod.containers["server"], grace_s)
                assert code == 0 and took < grace_s, (pod.name, code, took, logs(pod.containers["server"]))
        finally:
            for pod in pods:
                pod.remove()


def count_records(path: str) -> int:
    with lmdb.open(path, readonly=True, lock=False) as env:
        return env.stat()["entries"]
