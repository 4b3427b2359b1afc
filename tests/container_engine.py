"""Podman, as the container tests use it: images built as users build them, containers, compose.

``build_images()`` makes the Dockerfiles' base images from Debian's
packages when they are missing (deploy/debian-base-image.sh; no image
registry is reachable here) and builds the three images from the
repository's Dockerfiles, with the build command of the README. The
machine's CA bundle is mounted into the build (as an overlay, so that
installing ca-certificates can write there and the machine's files stay
as they are) so that pip reaches the package index. Podman's layer cache
makes a rebuild of unchanged files take seconds.

``PodmanService`` runs Podman's Docker-compatible API on a socket of its
own, which Debian's docker-compose drives as it would drive Docker.
Every network is made ``internal``: a bridge between the project's own
containers (and this machine), routed nowhere else.

Podman reads tests/containers.conf (runc, limits within the machine's).
These tests fail, never skip, when podman is missing: ./dev installs it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from deploy_support import REPO

CONTAINERS_CONF = Path(__file__).resolve().parent / "containers.conf"
BASE_IMAGE_SCRIPT = REPO / "deploy" / "debian-base-image.sh"
# (image, Dockerfile, target): the README's build commands.
IMAGES = (("zfeed-server", "deploy/server.Dockerfile", None),
          ("zfeed-demo-dataset", "deploy/server.Dockerfile", "demo-dataset"),
          ("zfeed-trainer", "deploy/trainer.Dockerfile", None))
BUILD_DEADLINE_S = 900
COMMAND_DEADLINE_S = 120


def engine_env() -> Dict[str, str]:
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    env.pop("ZFEED_CAFFE_PYTHON", None)
    return env


def podman(*args: str, timeout: float = COMMAND_DEADLINE_S, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: ./dev setup installs it (apt, as root)", pytrace=False)
    result = subprocess.run(["podman", *args], env=engine_env(), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError("podman %s: exit %d\n%s%s" % (" ".join(args), result.returncode,
                                                           result.stdout[-4000:], result.stderr[-4000:]))
    return result


def inspect(name: str, kind: str = "container") -> dict:
    found = json.loads(podman(kind, "inspect", name).stdout)
    return found if kind == "pod" else found[0]  # podman 4.3 gives a pod as an object, not a list


def base_images() -> List[str]:
    """The ``FROM`` images that are not stages of the Dockerfiles, e.g. debian:bookworm-slim."""
    bases = []
    for _image, dockerfile, _target in IMAGES:
        stages = set()
        for line in (REPO / dockerfile).read_text().splitlines():
            words = line.split()
            if words[:1] == ["FROM"]:
                if words[1] not in stages and words[1] not in bases:
                    bases.append(words[1])
                if len(words) == 4:
                    stages.add(words[3])
    return bases


@dataclass
class BuiltImage:
    name: str
    seconds: float
    size_mb: float


def build_images(log) -> List[BuiltImage]:
    """Make missing base images, then build every image; ``log(text)`` reports each step."""
    for base in base_images():
        name, _, tag = base.partition(":")
        assert name == "debian" and tag.endswith("-slim"), "no recipe for the base image %s" % base
        started = time.monotonic()
        result = subprocess.run(["sh", str(BASE_IMAGE_SCRIPT), tag[:-len("-slim")], "podman"], env=engine_env(),
                                capture_output=True, text=True, timeout=BUILD_DEADLINE_S)
        assert result.returncode == 0, "%s failed:\n%s" % (BASE_IMAGE_SCRIPT.name, result.stderr[-4000:])
        log("base image %s ready in %.0f s" % (base, time.monotonic() - started))
    built = []
    for name, dockerfile, target in IMAGES:
        started = time.monotonic()
        # As the README's `docker build`; docker format keeps the HEALTHCHECK (OCI has none).
        podman("build", "--format", "docker", "-v", "/etc/ssl/certs:/etc/ssl/certs:O", "-f", dockerfile,
               *(["--target", target] if target else []), "-t", name, str(REPO), timeout=BUILD_DEADLINE_S)
        size = inspect(name, "image")["Size"] / 1e6
        built.append(BuiltImage(name, time.monotonic() - started, size))
        log("image %s built in %.0f s: %.0f MB" % (name, built[-1].seconds, size))
    return built


class Network:
    """An internal bridge network (no route out) for one test; removed with its containers."""

    def __init__(self):
        self.name = "zfeed-test-%s" % uuid.uuid4().hex[:8]

    def __enter__(self) -> "Network":
        podman("network", "create", "--internal", self.name)
        return self

    def __exit__(self, *exc) -> None:
        podman("network", "rm", "--force", "--time", "0", self.name, check=False)


def run_container(image: str, *args: str, name: str, network: Optional[Network] = None,
                  options: Sequence[str] = ()) -> str:
    """Start a detached container; returns its name. The caller removes it (``remove``)."""
    podman("run", "--detach", "--name", name, *(["--network", network.name] if network else []), *options,
           image, *args)
    return name


def remove(*names: str) -> None:
    podman("rm", "--force", "--time", "0", *names, check=False)


def logs(name: str) -> str:
    result = podman("logs", name, check=False)
    return result.stdout + result.stderr


def state(name: str) -> dict:
    return inspect(name)["State"]


def command_pid(name: str) -> int:
    """The host pid of the image's command: the container's PID 1, or its one child when an init
    (``--init``, compose's ``init: true``) is PID 1."""
    pid = state(name)["Pid"]
    if "init" not in Path("/proc/%d/comm" % pid).read_text():  # podman-init, catatonit
        return pid
    deadline = time.monotonic() + 10
    while True:  # the init forks the command as it starts
        children = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()
        if children:
            assert len(children) == 1, "init of %s has children %s" % (name, children)
            return int(children[0])
        assert time.monotonic() < deadline, "the init of %s started no command in 10 s" % name
        time.sleep(0.001)


def wait_for_log(name: str, text: str, deadline_s: float = 60.0) -> str:
    deadline = time.monotonic() + deadline_s
    while True:
        output = logs(name)
        if text in output:
            return output
        if not state(name)["Running"] or time.monotonic() > deadline:
            raise AssertionError("%r never appeared in the log of %s:\n%s" % (text, name, output[-4000:]))
        time.sleep(0.3)


def finished_at(name: str) -> float:
    """When the container's process exited, as a time.time() value (podman's State.FinishedAt)."""
    stamp = state(name)["FinishedAt"]  # e.g. 2026-12-02T07:55:23.844977257Z: nanoseconds
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    whole = datetime.datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return whole.timestamp() + float("0." + (fraction or "0"))


def timed_stop(name: str, grace_s: float) -> tuple:
    """``podman stop`` as ``docker stop`` (SIGTERM, SIGKILL after ``grace_s``): (exit code, seconds
    from the signal to the container's exit; podman's own clean-up after that does not count)."""
    sent = time.time()
    podman("stop", "--time", str(int(grace_s)), name, timeout=grace_s + 60)
    return state(name)["ExitCode"], finished_at(name) - sent


class PodmanService:
    """``podman system service`` on a socket of its own, for docker-compose (``docker_host``)."""

    def __init__(self, folder: Path):
        self.socket = folder / "podman.sock"
        self.docker_host = "unix://%s" % self.socket
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "PodmanService":
        self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.docker_host],
                                        env=engine_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.process.poll() is None, "podman system service exited %s" % self.process.returncode
            assert time.monotonic() < deadline, "podman system service made no socket in 30 s"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Compose:
    """docker-compose on the repository's docker-compose.yml, as project ``project``."""

    def __init__(self, service: PodmanService, project: str, override: Path, env: Optional[Dict[str, str]] = None):
        self.service = service
        self.project = project
        self.files = [REPO / "docker-compose.yml", override]
        self.env = dict(engine_env(), DOCKER_HOST=service.docker_host, **(env or {}))

    def __call__(self, *args: str, timeout: float = COMMAND_DEADLINE_S, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker-compose", "--no-ansi", "-p", self.project]
        for path in self.files:
            command += ["-f", str(path)]
        result = subprocess.run(command + list(args), env=self.env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError("docker-compose %s: exit %d\n%s%s" % (" ".join(args), result.returncode,
                                                                      result.stdout[-4000:], result.stderr[-4000:]))
        return result

    def containers(self, service: str) -> List[str]:
        """Names of the service's containers (stopped ones too), in replica order."""
        result = podman("ps", "--all", "--format", "{{.Names}}", "--filter",
                        "label=com.docker.compose.project=%s" % self.project, "--filter",
                        "label=com.docker.compose.service=%s" % service)
        return sorted(result.stdout.split(), key=lambda name: int(name.rsplit("_", 1)[1]))

    def down(self) -> None:
        self("down", "--volumes", "--timeout", "0", check=False, timeout=300)


def exec_in(name: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("exec", name, *command, check=check)


def serving(name: str, ready_file: str = "/tmp/zfeed-ready") -> bool:
    """Whether the server in container ``name`` serves: its ready file (ZFEED_READY_FILE, as the
    compose file sets it; NOTE [ Ready file ]) exists."""
    return exec_in(name, "test", "-f", ready_file, check=False).returncode == 0


def wait_serving(name: str, deadline_s: float = 60.0) -> None:
    """Wait until ``serving(name)``; AssertionError with its log if it stops or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while not serving(name):
        if not state(name)["Running"] or time.monotonic() > deadline:
            raise AssertionError("%s never served; its log:\n%s" % (name, logs(name)[-4000:]))
        time.sleep(0.3)


def server_metrics(name: str) -> str:
    """A server's /metrics, read inside its container (where its health check reads them)."""
    return exec_in(name, "python", "-c", "import urllib.request; print(urllib.request.urlopen("
                   "'http://127.0.0.1:9100/metrics', timeout=5).read().decode())").stdout


def health_status(name: str) -> str:
    """Run the image's HEALTHCHECK now (podman schedules it with systemd, absent here); its status."""
    podman("healthcheck", "run", name, check=False)
    return state(name)["Health"]["Status"]


_built: List[BuiltImage] = []  # once per session, whichever test module asks first


@pytest.fixture(scope="session")
def built_images(request) -> List[BuiltImage]:
    """The three images, built (or found in podman's cache) once per test session."""
    if not _built:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        _built.extend(build_images(lambda text: reporter.write_line("containers: " + text)))
    return _built
