"""Child processes of the demo: data servers and the trainer.

Every child runs in its own session (a Ctrl-C in the terminal reaches only
the demo, which then stops the children in order) and gets PDEATHSIG, so a
demo that is killed outright takes its children with it. A data server is
stopped as an operator would: SIGTERM, then its exit status is checked
(the server exits 0 after a clean stop, see server/supervisor.py
``NOTE [ Shutdown protocol ]``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the server joins its workers 3 s and lingers 2 s at most
KILL_TIMEOUT_S = 5.0
POLL_S = 0.05
# What the server logs once its socket is bound (server/supervisor.py, DataServer.run).
READY_MARK = b" serving "
_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child failed to start or to stop; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> Dict[str, str]:
    """Our environment plus what every child needs: the repo importable, Caffe quiet."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
               PYTHONUNBUFFERED="1")
    env.setdefault("GLOG_minloglevel", "2")
    return env


def _die_with_parent(sig: int):
    def set_pdeathsig() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    return set_pdeathsig


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log at %s)" % path
    return "\n".join(text.splitlines()[-lines:])


def start_child(command: Sequence[str], stdout, stderr, die_signal: int) -> subprocess.Popen:
    """Start ``command`` in its own session, in the repo, with ``child_env()``."""
    return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            cwd=str(REPO), env=child_env(), start_new_session=True,
                            preexec_fn=_die_with_parent(die_signal))


def end_child(process: subprocess.Popen, timeout_s: float) -> Optional[int]:
    """SIGTERM ``process`` (unless it has exited), wait ``timeout_s``, then SIGKILL its session.

    Returns its exit status, or None when it had to be killed.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    else:
        return process.returncode
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the child and anything it started
    except ProcessLookupError:
        pass
    process.wait(KILL_TIMEOUT_S)
    return None


class DataServerProcess:
    """``python -m server ARGS --bind tcp://127.0.0.1:PORT`` with its output in ``log_path``."""

    def __init__(self, name: str, args: List[str], log_path: Path):
        self.name = name
        self.port = free_port()
        self.address = "tcp://127.0.0.1:%d" % self.port
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = start_child([sys.executable, "-m", "server", *args, "--bind", self.address],
                                       stdout=log, stderr=subprocess.STDOUT, die_signal=signal.SIGTERM)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once the server has bound its socket; raise ChildError if it exits or is late."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_running()
            if READY_MARK in self.log_path.read_bytes():
                return
            time.sleep(POLL_S)
        raise ChildError("the %s data server was not serving after %.0f s; %s:\n%s"
                         % (self.name, timeout_s, self.log_path, tail(self.log_path)))

    def check_running(self) -> None:
        """Raise ChildError, with the server's log, if it has exited."""
        if self.process.poll() is not None:
            raise ChildError("the %s data server exited with status %s; %s:\n%s"
                             % (self.name, self.process.returncode, self.log_path, tail(self.log_path)))

    def stop(self) -> Optional[int]:
        """SIGTERM, join with a deadline, kill if needed; returns the exit status (None: killed)."""
        return end_child(self.process, STOP_TIMEOUT_S)
