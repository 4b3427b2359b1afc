"""Test hosts in Linux network namespaces, joined by veth pairs to a bridge.

``Network`` makes a switch namespace holding a bridge and one namespace per
host, each with a veth pair to the bridge and an address in ``10.77.N.0/24``.
Every address lives inside namespaces this module created; nothing is
routed to the machine's own interfaces. Everything is deleted on exit,
processes first. Needs root and iproute2 (``ip``); ``available()`` says why
not, for a skip with a reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional

_counter = itertools.count()


def available() -> Optional[str]:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    probe = "zfprobe%d" % os.getpid()
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return "cannot create a network namespace: %s" % made.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, netns: Optional[str] = None) -> None:
    command = ["ip"] + (["-n", netns] if netns else []) + list(args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(command), result.stderr.strip()))


class Host:
    def __init__(self, name: str, netns: str, address: str):
        self.name = name
        self.netns = netns
        self.address = address

    def command(self, argv: List[str]) -> List[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns] + list(argv)


class Network:
    """``with Network(["server0", "server1", "trainer"]) as net: net.hosts["trainer"].address``"""

    def __init__(self, host_names: List[str]):
        self.tag = "zf%d_%d" % (os.getpid() % 100000, next(_counter))
        self.subnet = 10 + next(_counter) % 200
        self.switch = self.tag + "_sw"
        self.host_names = host_names
        self.hosts: Dict[str, Host] = {}
        self._namespaces: List[str] = []

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def __enter__(self) -> "Network":
        try:
            self._add_namespace(self.switch)
            _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
            _ip("link", "set", "br0", "up", netns=self.switch)
            for number, name in enumerate(self.host_names, start=1):
                netns = "%s_h%d" % (self.tag, number)
                self._add_namespace(netns)
                host_end, switch_end = "zfh%d" % number, "zfs%d" % number
                _ip("link", "add", host_end, "netns", netns, "type", "veth",
                    "peer", "name", switch_end, "netns", self.switch)
                _ip("link", "set", switch_end, "master", "br0", netns=self.switch)
                _ip("link", "set", switch_end, "up", netns=self.switch)
                address = "10.77.%d.%d" % (self.subnet, number)
                _ip("addr", "add", address + "/24", "dev", host_end, netns=netns)
                _ip("link", "set", host_end, "up", netns=netns)
                self.hosts[name] = Host(name, netns, address)
        except Exception:
            self.close()
            raise
        return self

    def shape(self, host: str, rate: str) -> None:
        """Limit what ``host`` sends to ``rate`` (tc tbf, e.g. "1gbit")."""
        netns = self.hosts[host].netns
        number = self.host_names.index(host) + 1
        result = subprocess.run(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "zfh%d" % number,
                                 "root", "tbf", "rate", rate, "burst", "1mb", "latency", "50ms"],
                                capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError("tc: %s" % result.stderr.strip())

    def set_link(self, host: str, up: bool) -> None:
        """Cut ``host`` off the bridge (``up=False``: its port goes down, every packet to or from it
        is dropped, its connections stay open) or plug it back in."""
        number = self.host_names.index(host) + 1
        _ip("link", "set", "zfs%d" % number, "up" if up else "down", netns=self.switch)

    def close(self) -> None:
        """Kill every process in the namespaces, wait for them to go, delete the namespaces."""
        deadline = time.monotonic() + 10
        for netns in reversed(self._namespaces):
            while time.monotonic() < deadline:
                pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                time.sleep(0.05)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._namespaces = []

    def __exit__(self, *exc_info) -> None:
        self.close()
