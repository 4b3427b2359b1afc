"""A Kubernetes pod of deploy/k8s/, run by hand with podman, with every setting its manifest gives.

Podman 4.3's ``kube play`` knows neither StatefulSets nor Jobs, and fails on
pods with init containers, so a pod is made as the StatefulSet controller
and the kubelet make it: a pod (its own network namespace and host name,
``NAME-ORDINAL``), each ``emptyDir`` a new volume (mode 2777, group
``fsGroup``, as the kubelet makes it), init containers run to completion in
order, then the containers. Each container gets its image, ``command``
(the image's ENTRYPOINT replaced) and ``args`` (its CMD replaced), ``env``,
volume mounts (``readOnly`` too), resource limits and security context.
A field not translated here fails the test, so nothing is silently left out.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from container_engine import Network, inspect, podman

HANDLED_POD_FIELDS = {"terminationGracePeriodSeconds", "securityContext", "initContainers", "containers",
                      "volumes", "restartPolicy"}
HANDLED_CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "resources",
                            "securityContext", "volumeMounts",
                            # probes: the test checks /metrics itself (podman runs no probes without systemd)
                            "readinessProbe", "livenessProbe"}


def _security_options(pod_context: dict, context: dict) -> List[str]:
    merged = dict(pod_context, **context)
    options = []
    handled = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile", "readOnlyRootFilesystem",
               "allowPrivilegeEscalation", "capabilities"}
    assert set(merged) <= handled, "untranslated securityContext fields: %s" % (set(merged) - handled)
    if "runAsUser" in merged:
        options += ["--user", "%s:%s" % (merged["runAsUser"], merged.get("runAsGroup", merged["runAsUser"]))]
    if "fsGroup" in merged:
        options += ["--group-add", str(merged["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        options.append("--read-only")
        options.append("--read-only-tmpfs=false")  # /tmp is only what the manifest mounts there
    if merged.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for capability in merged.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    assert not merged.get("capabilities", {}).get("add"), "capabilities.add is not translated"
    assert merged.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"  # podman's default
    return options


def _resource_options(resources: dict) -> List[str]:
    limits = resources.get("limits", {})
    options = []
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        options += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    if "memory" in limits:
        memory = str(limits["memory"])
        options += ["--memory", memory[:-2] + {"Ki": "k", "Mi": "m", "Gi": "g"}[memory[-2:]]]
    return options


class Pod:
    """Pod ``name`` of ``spec`` (a template's spec) on ``network``; ``remove()`` deletes it all.

    ``hosts``: names and addresses that cluster DNS would give (a headless Service's per-pod names).
    """

    def __init__(self, name: str, spec: dict, network: Network, hosts: Optional[Dict[str, str]] = None):
        assert set(spec) <= HANDLED_POD_FIELDS, "untranslated pod fields: %s" % (set(spec) - HANDLED_POD_FIELDS)
        self.name = name
        self.spec = spec
        self.network = network
        self.hosts = hosts or {}
        self.volumes: Dict[str, str] = {}
        self.containers: Dict[str, str] = {}

    def create(self) -> "Pod":
        podman("pod", "create", "--name", self.name, "--hostname", self.name, "--network", self.network.name,
               *["--add-host=%s:%s" % pair for pair in self.hosts.items()])
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        for volume in self.spec.get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, "only emptyDir volumes are translated: %s" % volume
            name = "%s-%s" % (self.name, volume["name"])
            podman("volume", "create", name)
            mountpoint = inspect(name, "volume")["Mountpoint"]
            if fs_group is not None:
                os.chown(mountpoint, 0, fs_group)
            os.chmod(mountpoint, 0o2777)
            self.volumes[volume["name"]] = name
        return self

    def run_options(self, container: dict) -> List[str]:
        """``podman run`` options and image for ``container``, then its arguments."""
        extra = set(container) - HANDLED_CONTAINER_FIELDS
        assert not extra, "untranslated container fields: %s" % extra
        options = ["--pod", self.name, "--name", "%s-%s" % (self.name, container["name"]),
                   "--pull", "never" if container.get("imagePullPolicy") == "IfNotPresent" else "missing"]
        options += _security_options(self.spec.get("securityContext", {}), container.get("securityContext", {}))
        options += _resource_options(container.get("resources", {}))
        for item in container.get("env", []):
            options += ["--env", "%s=%s" % (item["name"], item["value"])]
        for mount in container.get("volumeMounts", []):
            options += ["--volume", "%s:%s%s" % (self.volumes[mount["name"]], mount["mountPath"],
                                                 ":ro" if mount.get("readOnly") else "")]
        command = container.get("command")
        if command:
            options += ["--entrypoint", command[0]]
        image = container["image"].split(":")[0]  # :latest, as built here
        return options + [image] + (command[1:] if command else []) + container.get("args", [])

    def run_init_containers(self, deadline_s: float = 300) -> None:
        for container in self.spec.get("initContainers", []):
            result = podman("run", "--rm", *self.run_options(container), timeout=deadline_s, check=False)
            assert result.returncode == 0, "init container %s of %s: exit %d\n%s%s" % (
                container["name"], self.name, result.returncode, result.stdout[-3000:], result.stderr[-3000:])

    def start_containers(self) -> Dict[str, str]:
        """Start the containers, detached; returns their podman names by manifest name."""
        for container in self.spec["containers"]:
            podman("run", "--detach", *self.run_options(container))
            self.containers[container["name"]] = "%s-%s" % (self.name, container["name"])
        return self.containers

    def ip_address(self) -> str:
        infra = inspect(self.name, "pod")["InfraContainerID"]
        return inspect(infra)["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]

    def remove(self) -> None:
        podman("pod", "rm", "--force", "--time", "0", self.name, check=False)
        if self.volumes:
            podman("volume", "rm", "--force", *self.volumes.values(), check=False)
