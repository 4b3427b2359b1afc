"""The container files, read as their tools read them, and run as plain processes.

Readers: ``compose_config()`` is what ``docker-compose config`` makes of
docker-compose.yml (interpolation, anchors and merge keys resolved by
Compose itself); ``dockerfile_stages()`` splits a Dockerfile into stages;
``k8s_documents()`` loads deploy/k8s/.

Running without a container engine (the real images run in test_containers.py): ``Container`` runs an image's
command as a process, as the image would: the repository stands for the
image's ``/opt/zfeed`` (its WORKDIR), ``python`` on PATH is the interpreter
the image has (the test's for the server, the Caffe Python for the
trainer), and the environment is the image's ENV plus the service's.
Paths and ports are mapped with ``localize`` (``/demo`` to a temporary
folder, ``tcp://trainer:5555`` to a free port of 127.0.0.1). A container
may get its own host name (a UTS namespace, as every container has) and
read-only bind mounts (a mount namespace): ``unshare`` execs the command,
so the process started is the image's PID 1. These need root;
``isolation_missing()`` says why they are not available.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import yaml

from harness.children import ChildProcess

REPO = Path(__file__).resolve().parent.parent
IMAGE_ROOT = "/opt/zfeed"  # the images' WORKDIR, where the repository's files are copied
SERVER_DOCKERFILE = REPO / "deploy" / "server.Dockerfile"
TRAINER_DOCKERFILE = REPO / "deploy" / "trainer.Dockerfile"
DEADLINE_S = 30.0


def compose_config() -> dict:
    """docker-compose.yml as Compose resolves it (defaults of ``${VAR:-default}`` applied)."""
    return copy.deepcopy(_compose_config())


@functools.lru_cache(maxsize=None)
def _compose_config() -> dict:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZFEED_", "COMPOSE_"))}
    result = subprocess.run([tool, "-f", str(REPO / "docker-compose.yml"), "config"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@dataclass
class Stage:
    """One ``FROM`` stage of a Dockerfile: instructions with continuation lines joined."""

    name: str
    base: str
    instructions: List[tuple] = field(default_factory=list)  # (KEYWORD, rest of the line)

    def all(self, keyword: str) -> List[str]:
        return [rest for word, rest in self.instructions if word == keyword]

    def exec_form(self, keyword: str) -> List[str]:
        """The JSON (exec) form of the last ``keyword``; fails when it is the shell form."""
        rest = self.all(keyword)[-1]
        if keyword == "HEALTHCHECK":
            rest = rest.split(" CMD ", 1)[1]
        assert rest.startswith("["), "%s %s is not in exec form" % (keyword, rest)
        return json.loads(rest)


def dockerfile_stages(path: Path) -> Dict[str, Stage]:
    """Stages by name (unnamed ones by their index), in order."""
    text = re.sub(r"\\\n\s*", "", path.read_text())
    stages: Dict[str, Stage] = {}
    current: Optional[Stage] = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0])
        else:
            assert current is not None, "%s: %s before FROM" % (path, keyword)
            current.instructions.append((keyword, rest.strip()))
    return stages


def image_env(stages: Dict[str, Stage], name: str) -> Dict[str, str]:
    """The ENV of stage ``name``, with what it inherits from the stages it is built on."""
    stage = stages[name]
    env = image_env(stages, stage.base) if stage.base in stages else {}
    for rest in stage.all("ENV"):
        env.update(pair.split("=", 1) for pair in rest.split())
    return env


def image_user(stage: Stage) -> str:
    users = stage.all("USER")
    return users[-1] if users else "root"


def metric(text: str, name: str) -> float:
    """The value of the first series ``name`` (labelled or not) in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no metric %s in:\n%s" % (name, text))


def k8s_documents() -> List[dict]:
    documents = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def k8s_by_kind(kind: str) -> Dict[str, dict]:
    """The manifests' objects of one kind, by name."""
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def env_list(container: dict) -> Dict[str, str]:
    """A Kubernetes container's ``env`` as a dict."""
    return {item["name"]: item["value"] for item in container.get("env", [])}


def option(argv: Sequence[str], name: str) -> str:
    """The value of option ``name``, which must appear once in ``argv``."""
    values = options(argv, name)
    assert len(values) == 1, "%s appears %d times in %s" % (name, len(values), argv)
    return values[0]


def options(argv: Sequence[str], name: str) -> List[str]:
    """The values of every ``name VALUE`` in ``argv``, in order."""
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == name]


def localize(value: str, mapping: Dict[str, str]) -> str:
    """``value`` with each key of ``mapping`` that stands alone (a whole path or endpoint) replaced.

    One pass, so a replacement is never replaced again; "/demo" is replaced in
    "lmdb:/demo/x" but not in "/opt/zfeed/deploy/demo_setup.py".
    """
    if not mapping:
        return value
    keys = "|".join(re.escape(key) for key in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w./-])(?:%s)(?![\w.-])" % keys)
    return pattern.sub(lambda match: mapping[match.group(0)], value)


def in_repo(path: str) -> str:
    """An image path under /opt/zfeed as the repository's path."""
    return localize(path, {IMAGE_ROOT: str(REPO)})


def isolation_missing() -> Optional[str]:
    """None when processes can get their own host name and mounts here, else why not."""
    if os.geteuid() != 0:
        return "UTS and mount namespaces need root"
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        return "util-linux's unshare or the hostname command is missing"
    probe = subprocess.run(["unshare", "--mount", "--uts", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return "cannot create namespaces: %s" % probe.stderr.strip()
    return None


def isolated(command: Sequence[str], hostname: Optional[str], read_only: Sequence[Path]) -> List[str]:
    """``command`` run with its own host name and read-only bind mounts; it keeps the pid (exec)."""
    if hostname is None and not read_only:
        return list(command)
    script = "set -e; "
    if hostname is not None:
        script += 'hostname "$1"; shift; '
    script += 'mount --bind -o ro "$1" "$1"; shift; ' * len(read_only)
    script += 'exec "$@"'
    return ["unshare", "--mount", "--uts", "sh", "-c", script, "sh",
            *([hostname] if hostname is not None else []), *map(str, read_only), *command]


def container_env(image: Dict[str, str], service: Dict[str, str], python: str) -> Dict[str, str]:
    """Our environment without zfeed's variables, plus the image's and the service's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZFEED_") and k != "PYTHONPATH"}
    # The image's PATH names where its python is, which ``python`` stands in for here.
    env.update({name: in_repo(value) for name, value in image.items() if name != "PATH"})
    env.update(service)
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    return env


class Container(ChildProcess):
    """An image's command as a process in its own session (stopping or killing it reaches whatever
    it started), output in ``log_path``; ``ready_path``: the ``ZFEED_READY_FILE`` its env sets."""

    def __init__(self, command: Sequence[str], env: Dict[str, str], log_path: Path,
                 hostname: Optional[str] = None, read_only: Sequence[Path] = (), ready_path: Optional[Path] = None):
        super().__init__(isolated([in_repo(part) for part in command], hostname, read_only), log_path,
                         env=env, ready_path=ready_path)

    def cmdline(self) -> List[str]:
        return Path("/proc/%d/cmdline" % self.process.pid).read_bytes().decode().split("\0")[:-1]


def run_command(command: Sequence[str], env: Dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run an image's one-shot command (a health check, a set-up step) to completion."""
    return subprocess.run([in_repo(part) for part in command], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=timeout)
