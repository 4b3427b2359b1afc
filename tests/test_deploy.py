"""The container files, checked by the tools that read them and against the server's own parser.

docker-compose.yml: Debian's docker-compose (``config``: Compose's own
parsing, interpolation and schema) and the current Compose Specification
schema (check-jsonschema's copy). deploy/k8s/: kubernetes-validate, the
Kubernetes API's JSON schemas, strictly (unknown fields are errors). The
Dockerfiles are read here; test_deploy_processes.py runs what they run as
plain processes, and test_containers.py builds and runs the images.
These tests fail, never skip, when a tool is missing: ./dev installs them.
"""

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_support import (IMAGE_ROOT, REPO, SERVER_DOCKERFILE, TRAINER_DOCKERFILE, compose_config,
                            dockerfile_stages, env_list, image_env, image_user, k8s_by_kind as by_kind,
                            k8s_documents, option, options, pod_spec)
from demo.__main__ import trainer_command
from demo.dataset import CLASS_COUNT, TEST_PER_CLASS
from demo.nets import DEFAULT_ITERATIONS, SCALE, SEED, TEST_BATCH, TRAIN_BATCH
from server.config import parse_config

pytestmark = pytest.mark.deploy

IMAGE_UID = "10001"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and newest that kubernetes-validate ships schemas for here
DEMO_TEST_SAMPLES = TEST_PER_CLASS * CLASS_COUNT
SERVER_STOP_S = 5  # the server exits within this after SIGTERM (README, "Stopping")


def demo_trainer_command(solver: str):
    """The command line with which ``python -m demo`` starts its trainer (its run_trainer() runs
    ``trainer_command``). The script's path is given relative to the repository, as the image's
    WORKDIR holds it."""
    command = trainer_command("python", Path(solver), DEMO_TEST_SAMPLES)
    command[1] = os.path.relpath(command[1], REPO)
    return command


# -- docker-compose.yml ----------------------------------------------------------------------------

def test_compose_file_is_valid_for_docker_compose_and_the_compose_spec():
    compose_config()  # fails unless `docker-compose config` accepts the file
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed: pip install -r requirements-dev.txt", pytrace=False)
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(REPO / "docker-compose.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_servers_run_the_demo_servers_options():
    services = compose_config()["services"]
    for name, phase, batch, lmdb in (("trainserver", "train", TRAIN_BATCH, "train_lmdb"),
                                     ("testserver", "test", TEST_BATCH, "test_lmdb")):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/server.Dockerfile" and "target" not in service["build"]
        # What the server in the image makes of the service's environment and command.
        config = parse_config(service.get("command", []), service["environment"])
        # What demo/__main__.py's server_args() gives its servers.
        assert (config.source, config.phase, config.batch_size, config.mean_file, config.scale, config.workers) == \
            ("lmdb:/demo/%s" % lmdb, phase, batch, "/demo/mean.binaryproto", SCALE, 1)
        assert config.bind == [] and config.connect == ["tcp://trainer:%d" % (5555 if phase == "train" else 5556)]
        assert service["volumes"] == ["demo:/demo:ro"] and service["read_only"] is True
        assert service["depends_on"]["dataset"] == {"condition": "service_completed_successfully"}
    # Replicas of the train service differ by host name only: each must draw its own order.
    assert services["trainserver"]["environment"]["ZFEED_SEED"] == "hostname"
    assert services["testserver"]["environment"]["ZFEED_SEED"] == str(SEED)


def test_compose_trainer_runs_what_the_demo_runs():
    services = compose_config()["services"]
    dataset, trainer = services["dataset"], services["trainer"]
    assert dataset["build"]["target"] == "demo-dataset"
    folder, *setup = dataset["command"]
    assert option(setup, "--iterations") == str(DEFAULT_ITERATIONS)
    assert trainer["command"] == demo_trainer_command(folder + "/lenet_digits_solver.prototxt")
    assert dataset["volumes"] == trainer["volumes"] == ["demo:%s:rw" % folder]
    assert trainer["depends_on"]["dataset"] == {"condition": "service_completed_successfully"}
    # The trainer's layers bind where the servers dial in: the trainer's service name, the bound port.
    for phase, server in (("train", "trainserver"), ("test", "testserver")):
        port = option(setup, "--%s-bind" % phase).rpartition(":")[2]
        assert services[server]["environment"]["ZFEED_CONNECT"] == "tcp://trainer:%s" % port


# -- Dockerfiles ----------------------------------------------------------------------------------

def copied_sources(stage):
    for rest in stage.all("COPY"):
        yield from rest.split()[:-1]


def test_dockerfiles_copy_what_exists_and_the_build_context_holds_it():
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything else is let in by name
    for dockerfile in (SERVER_DOCKERFILE, TRAINER_DOCKERFILE):
        for stage in dockerfile_stages(dockerfile).values():
            for source in copied_sources(stage):
                assert (REPO / source).exists(), "%s copies %s, which does not exist" % (dockerfile.name, source)
                assert "!" + source.split("/")[0] in patterns, ".dockerignore leaves out %s" % source


def test_server_image_runs_the_server_as_pid_1_non_root_with_a_health_check():
    stages = dockerfile_stages(SERVER_DOCKERFILE)
    server = list(stages.values())[-1]  # the default target
    assert server.name == "server" and stages["base"].base == "debian:bookworm-slim"  # Debian's Python 3.11
    assert image_user(server) == "zfeed" and "--uid %s" % IMAGE_UID in " ".join(stages["base"].all("RUN"))
    # Exec form: no shell in between. The base image's CMD (bash) must not become an argument.
    assert server.exec_form("ENTRYPOINT") == ["python", "-m", "server"] and server.exec_form("CMD") == []
    assert server.exec_form("HEALTHCHECK") == ["python", IMAGE_ROOT + "/deploy/healthcheck.py"]
    assert server.all("STOPSIGNAL") == ["SIGTERM"]
    env = image_env(stages, "server")
    assert env["PYTHONPATH"] == IMAGE_ROOT and env["ZFEED_METRICS_PORT"] == "9100"


def test_demo_dataset_image_has_the_dev_environments_scikit_learn():
    stages = dockerfile_stages(SERVER_DOCKERFILE)
    dataset = stages["demo-dataset"]
    dev_pin = re.search(r"^scikit-learn==\S+", (REPO / "requirements-dev.txt").read_text(), re.M).group(0)
    assert any(dev_pin in rest.split() for rest in dataset.all("RUN"))
    assert image_user(dataset) == "zfeed"
    assert dataset.exec_form("ENTRYPOINT") == ["python", IMAGE_ROOT + "/deploy/demo_setup.py"]


def test_trainer_image_has_caffe_on_python_3_9_and_the_layer_on_its_path():
    stages = dockerfile_stages(TRAINER_DOCKERFILE)
    (trainer,) = stages.values()
    assert trainer.base == "debian:bullseye-slim" and image_user(trainer) == "zfeed"  # Debian's Python 3.9
    assert any("-r %s/requirements-caffe.txt" % IMAGE_ROOT in rest for rest in trainer.all("RUN"))
    assert image_env(stages, trainer.name)["PYTHONPATH"] == IMAGE_ROOT  # client_layer and demo import from there
    assert {"client_layer", "demo"} <= set(copied_sources(trainer))


def test_images_that_write_the_demo_volume_own_its_mount_point():
    # A new named volume takes the owner of the image's folder that it is mounted on, and the images
    # run as zfeed: without this, the data set could not be written.
    services = compose_config()["services"]
    assert services["trainer"]["build"]["dockerfile"] == "deploy/trainer.Dockerfile"
    images = {"dataset": dockerfile_stages(SERVER_DOCKERFILE)[services["dataset"]["build"]["target"]],
              "trainer": list(dockerfile_stages(TRAINER_DOCKERFILE).values())[-1]}
    for name, stage in images.items():
        (volume,) = services[name]["volumes"]
        _, path, mode = volume.split(":")
        runs = " ".join(stage.all("RUN"))
        assert mode == "rw" and "mkdir %s" % path in runs and "chown zfeed:zfeed %s" % path in runs
        assert image_user(stage) == "zfeed"


# -- deploy/k8s/ ----------------------------------------------------------------------------------

def kubernetes_validate():
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail("kubernetes-validate is not installed: pip install -r requirements-dev.txt", pytrace=False)
    import kubernetes_validate
    return kubernetes_validate


def test_manifests_validate_against_the_kubernetes_schemas():
    validator = kubernetes_validate()
    documents = k8s_documents()
    assert {doc["kind"] for doc in documents} == {"Service", "StatefulSet", "Job"}
    for version in KUBERNETES_VERSIONS:
        for doc in documents:
            validator.validate(doc, version, strict=True)  # raises on an unknown kind or field, or a bad value


def test_kubernetes_validate_refuses_what_kubernetes_refuses():
    validator = kubernetes_validate()
    statefulset = next(iter(by_kind("StatefulSet").values()))
    misspelt = dict(statefulset, spec=dict(statefulset["spec"], replica=2))
    with pytest.raises(validator.ValidationError):
        validator.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)


def check_pod_security(spec):
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == IMAGE_UID
    for container in spec.get("initContainers", []) + spec["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)


def cpus(quantity):
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_server_statefulsets_shard_by_ordinal_behind_headless_services(monkeypatch):
    services = by_kind("Service")
    for name, statefulset in by_kind("StatefulSet").items():
        service = services[statefulset["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
        assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"] \
            == statefulset["spec"]["template"]["metadata"]["labels"]
        spec = pod_spec(statefulset)
        check_pod_security(spec)
        assert spec["terminationGracePeriodSeconds"] > SERVER_STOP_S
        (container,) = spec["containers"]
        replicas = statefulset["spec"]["replicas"]
        for ordinal in range(replicas):
            monkeypatch.setattr(socket, "gethostname", lambda: "%s-%d" % (name, ordinal))
            config = parse_config(container.get("args", []), env_list(container))
            assert (config.shard.index, config.shard.count) == ((ordinal, replicas) if replicas > 1 else (0, 1))
        assert "command" not in container  # the image's: python -m server
        assert config.seed == SEED  # the same in every shard, so that they split one order
        assert config.workers <= cpus(container["resources"]["limits"]["cpu"])
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert config.bind == ["tcp://*:%d" % ports["data"]] and config.metrics_port == ports["metrics"]
        # A headless Service maps no ports: a pod's DNS name is dialled at the container's port.
        assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == ports
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        (data,) = [mount for mount in container["volumeMounts"]
                   if config.source.startswith("lmdb:" + mount["mountPath"])]
        assert data["readOnly"] is True and data["name"] in volumes


def test_trainer_job_connects_to_every_server_pod_and_runs_what_the_demo_runs():
    (job,) = by_kind("Job").values()
    spec = pod_spec(job)
    check_pod_security(spec)
    (setup,), (trainer,) = spec["initContainers"], spec["containers"]
    folder, *args = setup["args"]
    statefulsets, services = by_kind("StatefulSet"), by_kind("Service")

    def pod_addresses(name):
        statefulset = statefulsets[name]
        service = statefulset["spec"]["serviceName"]
        (port,) = [p["port"] for p in services[service]["spec"]["ports"] if p["name"] == "data"]
        return ["tcp://%s-%d.%s:%d" % (name, i, service, port) for i in range(statefulset["spec"]["replicas"])]

    assert options(args, "--train-address") == pod_addresses("zfeed-server")
    assert options(args, "--test-address") == pod_addresses("zfeed-test-server") and \
        len(pod_addresses("zfeed-test-server")) == 1
    assert trainer["command"] == demo_trainer_command(folder + "/lenet_digits_solver.prototxt")
