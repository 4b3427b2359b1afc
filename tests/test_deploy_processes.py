"""What the images run, run here as plain processes, as the compose file and the manifests run it.

Without a container engine (see deploy_support; the images run in test_containers.py): each container is a
process with the image's command, ENV and working directory, the service's
environment, paths and ports mapped to this machine, its own host name and
its data mounted read-only. Checked: that the server image's command takes
its settings from ``ZFEED_*`` variables and its arguments; that the process
started is the server itself (the image's PID 1) and exits 0 on SIGTERM;
the image's health check; that the StatefulSet's pods together deliver each
sample once per epoch; and that `docker compose up --scale trainserver=2`
trains the demo in real Caffe.
"""

import contextlib
import json
import re
import sys
import time
import urllib.request

import lmdb
import pytest

from caffe_runner import caffe_python
from client_layer import BatchClient
from deploy_support import (SERVER_DOCKERFILE, TRAINER_DOCKERFILE, Container, compose_config, container_env,
                            dockerfile_stages, env_list, image_env, isolation_missing, k8s_by_kind, localize,
                            metric, option, pod_spec, run_command)
from harness.children import free_port
from harness.datasets import random_images, write_npz

pytestmark = pytest.mark.deploy

ISOLATION = isolation_missing()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=ISOLATION or "")
TRAINER_DEADLINE_S = 150.0
READY_DEADLINE_S = 30.0
LOCALHOST = "tcp://127.0.0.1:%d"


def server_stage():
    stages = dockerfile_stages(SERVER_DOCKERFILE)
    return stages, stages["server"]


def start_demo_setup(stages, args, log_path):
    """The demo-dataset image (deploy/demo_setup.py) with ``args``, paths already mapped."""
    return Container(stages["demo-dataset"].exec_form("ENTRYPOINT") + list(args),
                     container_env(image_env(stages, "demo-dataset"), {}, sys.executable), log_path)


def wait_until_metrics_answer(port, server, deadline_s=READY_DEADLINE_S):
    """Kubernetes' readiness probe: GET /metrics until it answers."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("/metrics on port %d never answered; log:\n%s" % (port, server.log))
            time.sleep(0.1)


def health(stages, server_env):
    """The image's HEALTHCHECK command's exit status, for a server run with ``server_env``."""
    return run_command(stages["server"].exec_form("HEALTHCHECK"), server_env, timeout=30).returncode


# -- the server image's command: settings from ZFEED_* variables and arguments ------------------------

SAMPLES = 20


def start_server_image(tmp_path, env, args=(), hostname=None, name="server"):
    """The server image's ENTRYPOINT with the image's ENV, ``env`` and ``args``."""
    stages, server = server_stage()
    return Container(server.exec_form("ENTRYPOINT") + list(args),
                     container_env(image_env(stages, "server"), env, sys.executable),
                     tmp_path / ("%s.log" % name), hostname=hostname)


def test_server_image_takes_its_settings_from_zfeed_variables_and_its_arguments_win(tmp_path):
    data = write_npz(tmp_path / "data.npz", random_images(SAMPLES), list(range(SAMPLES)))
    port, metrics_port = free_port(), free_port()
    env = {"ZFEED_SOURCE": "npz:%s" % data, "ZFEED_BIND": LOCALHOST % port, "ZFEED_BATCH_SIZE": "7",
           "ZFEED_SHUFFLE": "no", "ZFEED_WORKERS": "1", "ZFEED_METRICS_PORT": str(metrics_port)}
    with start_server_image(tmp_path, env, ["--batch-size", "4"]) as server:
        wait_until_metrics_answer(metrics_port, server)
        assert server.cmdline()[1:] == ["-m", "server", "--batch-size", "4"]  # no script: the server is PID 1
        with BatchClient(LOCALHOST % port, timeout_s=20) as client:
            batch = client.receive()
        assert batch.indices.tolist() == [0, 1, 2, 3]  # ZFEED_SHUFFLE=no; the argument's batch size wins
        assert server.stop(timeout_s=10) == 0, server.log


def test_server_image_refuses_a_bad_variable_with_status_2_naming_it(tmp_path):
    with start_server_image(tmp_path, {"ZFEED_SOURCE": "npz:/data/a.npz", "ZFEED_MIRROR": "maybe"}) as server:
        assert server.wait(READY_DEADLINE_S) == 2, server.log
    assert "ZFEED_MIRROR=maybe: expected 1/true/yes or 0/false/no" in server.log, server.log


@needs_isolation
def test_seed_hostname_gives_each_replica_its_own_seed(tmp_path):
    data = write_npz(tmp_path / "data.npz", random_images(SAMPLES), list(range(SAMPLES)))
    seeds = []
    for replica in (1, 1, 2):
        env = {"ZFEED_SOURCE": "npz:%s" % data, "ZFEED_BIND": LOCALHOST % free_port(), "ZFEED_SEED": "hostname",
               "ZFEED_WORKERS": "1", "ZFEED_METRICS_PORT": "0"}
        with start_server_image(tmp_path, env, hostname="zfeed-trainserver-%d" % replica,
                                name="replica-%d-%d" % (replica, len(seeds))) as server:
            server.wait_for_log(" serving ")
            seeds.append(re.search(r"; seed (\d+);", server.log).group(1))
            assert server.stop(timeout_s=10) == 0, server.log
    assert seeds[0] == seeds[1] != seeds[2], seeds


# -- Kubernetes: the StatefulSet's pods ------------------------------------------------------------

def train_layer_params(net_path):
    """The param_str of the net's TRAIN data layer (the template's first layer), as JSON."""
    text = net_path.read_text()
    first_layer = text[:text.index("include { phase: TEST }")]
    (param_str,) = re.findall(r"param_str: '(\{[^']*\})'", first_layer)
    assert "include { phase: TRAIN }" in first_layer
    return json.loads(param_str)


def lmdb_records(path):
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return list(txn.cursor())


EPOCH_DEADLINE_S = 60


@needs_isolation
def test_statefulset_pods_serve_each_sample_once_per_epoch_and_stop_on_sigterm(tmp_path):
    name = "zfeed-server"
    statefulset = k8s_by_kind("StatefulSet")[name]
    service_name = statefulset["spec"]["serviceName"]
    spec = pod_spec(statefulset)
    (init,), (container,) = spec["initContainers"], spec["containers"]
    (data_mount,) = [m for m in container["volumeMounts"] if m.get("readOnly")]
    data_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "data")
    (job,) = k8s_by_kind("Job").values()
    (job_setup,) = pod_spec(job)["initContainers"]
    (job_volume,) = [m for m in job_setup["volumeMounts"] if m["name"] != "tmp"]
    stages, server = server_stage()
    replicas = statefulset["spec"]["replicas"]
    assert replicas >= 2
    with contextlib.ExitStack() as stack:
        # Each pod's init container builds the data set into the pod's own emptyDir; all pods at once.
        pods, builds = [], []
        for ordinal in range(replicas):
            folder = tmp_path / ("%s-%d" % (name, ordinal)) / "data"
            folder.mkdir(parents=True)
            pods.append({"folder": folder, "port": free_port(), "metrics": free_port()})
            args = [localize(arg, {data_mount["mountPath"]: str(folder)}) for arg in init["args"]]
            builds.append(stack.enter_context(start_demo_setup(stages, args, tmp_path / ("init-%d.log" % ordinal))))
        # The trainer Job's init container writes the net, pointing its layer at every pod's DNS name.
        pod_names = {"tcp://%s-%d.%s:%d" % (name, ordinal, service_name, data_port): LOCALHOST % pod["port"]
                     for ordinal, pod in enumerate(pods)}
        job_folder = tmp_path / "zfeed-trainer" / "demo"
        job_folder.mkdir(parents=True)
        args = [localize(arg, dict(pod_names, **{job_volume["mountPath"]: str(job_folder)})) for arg in job_setup["args"]]
        builds.append(stack.enter_context(start_demo_setup(stages, args, tmp_path / "job-init.log")))
        for build in builds:
            assert build.wait(90) == 0, build.log
        first = lmdb_records(pods[0]["folder"] / "train_lmdb")
        for pod in pods[1:]:
            assert lmdb_records(pod["folder"] / "train_lmdb") == first  # every shard splits the same data set

        for ordinal, pod in enumerate(pods):
            mapping = {data_mount["mountPath"]: str(pod["folder"]), "tcp://*:%d" % data_port: LOCALHOST % pod["port"]}
            env = {key: localize(value, mapping) for key, value in env_list(container).items()}
            env["ZFEED_METRICS_PORT"] = str(pod["metrics"])
            pod["env"] = container_env(image_env(stages, "server"), env, sys.executable)
            pod["server"] = stack.enter_context(Container(
                server.exec_form("ENTRYPOINT") + container.get("args", []), pod["env"],
                tmp_path / ("%s-%d.log" % (name, ordinal)), hostname="%s-%d" % (name, ordinal),
                read_only=[pod["folder"]]))
        for pod in pods:
            wait_until_metrics_answer(pod["metrics"], pod["server"])
            assert pod["server"].cmdline()[1:3] == ["-m", "server"]  # exec'd: the server is the image's PID 1
            assert health(stages, pod["env"]) == 0

        # Receive as the trainer's train layer does, with its param_str.
        train_layer = train_layer_params(job_folder / "lenet_digits_train_val.prototxt")
        assert sorted(train_layer["address"]) == sorted(pod_names.values())
        size = len(first)
        seen = set()
        # Each pod streams its own shard's epochs at its own pace: a pod whose first batches come
        # late lets the other run several epochs ahead, so epoch 0 is bounded in time, not samples.
        deadline = time.monotonic() + EPOCH_DEADLINE_S
        with BatchClient(train_layer["address"], timeout_s=min(train_layer["timeout_s"], 20)) as client:
            while sum(1 for epoch, _ in seen if epoch == 0) < size:
                batch = client.receive()
                for pair in zip(batch.epochs.tolist(), batch.indices.tolist()):
                    assert pair not in seen, "sample %d of epoch %d delivered twice" % pair[::-1]
                    seen.add(pair)
                assert time.monotonic() < deadline, "epoch 0 is still incomplete after %d s (%d samples)" % (
                    EPOCH_DEADLINE_S, len(seen))
        assert sorted(index for epoch, index in seen if epoch == 0) == list(range(size))

        for pod in pods:  # Kubernetes sends SIGTERM, and SIGKILL after the grace period
            assert pod["server"].stop(timeout_s=spec["terminationGracePeriodSeconds"]) == 0, pod["server"].log
            assert health(stages, pod["env"]) == 1


# -- docker compose up --scale trainserver=2 ------------------------------------------------------

@needs_isolation
def test_compose_demo_trains_in_caffe_with_two_train_server_replicas(tmp_path):
    services = compose_config()["services"]
    stages, server = server_stage()
    trainer_stages = dockerfile_stages(TRAINER_DOCKERFILE)
    folder = tmp_path / "demo"
    folder.mkdir()
    (volume,) = services["dataset"]["volumes"]  # demo:/demo:rw
    mapping = {volume.split(":")[1]: str(folder)}
    # Each endpoint the trainer's layers bind, and the same port dialled at the trainer's service name.
    for phase in ("train", "test"):
        port = int(option(services["dataset"]["command"], "--%s-bind" % phase).rpartition(":")[2])
        mapping["tcp://*:%d" % port] = mapping["tcp://trainer:%d" % port] = LOCALHOST % free_port()

    with contextlib.ExitStack() as stack:
        setup = stack.enter_context(start_demo_setup(
            stages, [localize(arg, mapping) for arg in services["dataset"]["command"]], tmp_path / "dataset.log"))
        assert setup.wait(90) == 0, setup.log  # the trainer and servers depend on its completion
        trainer = stack.enter_context(Container(
            [localize(arg, mapping) for arg in services["trainer"]["command"]],
            container_env(image_env(trainer_stages, list(trainer_stages)[-1]), {}, caffe_python()),
            tmp_path / "trainer.log"))
        servers = []  # (container, its environment)
        for name, replicas in (("trainserver", 2), ("testserver", 1)):  # as with --scale trainserver=2
            for replica in range(1, replicas + 1):
                env = {key: localize(value, mapping) for key, value in services[name]["environment"].items()}
                env["ZFEED_METRICS_PORT"] = str(free_port())  # the image's 9100, one port per replica here
                ready = tmp_path / ("%s-%d.ready" % (name, replica))
                env["ZFEED_READY_FILE"] = str(ready)
                env = container_env(image_env(stages, "server"), env, sys.executable)
                container = stack.enter_context(Container(
                    server.exec_form("ENTRYPOINT") + services[name].get("command", []), env,
                    tmp_path / ("%s-%d.log" % (name, replica)), hostname="zfeed-%s-%d" % (name, replica),
                    read_only=[folder], ready_path=ready))
                servers.append((container, env))
        for container, env in servers:
            container.wait_ready()
            assert health(stages, env) == 0
        # Every replica dials in to the trainer, which takes batches from all of them.
        connected = set()
        while len(connected) < len(servers) and trainer.process.poll() is None:
            for number, (container, env) in enumerate(servers):
                text = wait_until_metrics_answer(int(env["ZFEED_METRICS_PORT"]), container)
                if metric(text, "zfeed_trainers_connected") == 1:
                    connected.add(number)
            time.sleep(0.1)
        assert len(connected) == len(servers), "%d of %d servers reached the trainer" % (len(connected), len(servers))
        assert trainer.wait(TRAINER_DEADLINE_S) == 0 and "result: PASS" in trainer.log, trainer.log
        for container, _ in servers:  # `docker compose down`: SIGTERM, SIGKILL after stop_grace_period
            grace_s = float(services["trainserver"]["stop_grace_period"].rstrip("s"))
            assert container.stop(timeout_s=grace_s) == 0, container.log
