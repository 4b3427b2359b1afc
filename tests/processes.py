"""Real zfeed server processes for tests: random ports, deadlines, no leftovers."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid: int) -> List[int]:
    """Direct children of ``pid`` (from /proc)."""
    try:
        tasks = Path("/proc/%d/task" % pid).iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    try:
        status = Path("/proc/%d/status" % pid).read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    raise AssertionError("no SigCgt in /proc/%d/status" % pid)


def has_loaded(pid: int, library: str) -> bool:
    """Whether a file whose path holds ``library`` is mapped into process ``pid`` (an extension module)."""
    return library in Path("/proc/%d/maps" % pid).read_text()


def wait_for_handler(pid: int, signum: int, deadline_s: float = DEADLINE_S) -> None:
    """Wait until process ``pid`` has a handler for ``signum``."""
    deadline = time.monotonic() + deadline_s
    while not catches(pid, signum):
        assert time.monotonic() < deadline, "pid %d has no handler for signal %d after %.0f s" % (
            pid, signum, deadline_s)
        time.sleep(0.001)


class LoggedProcess:
    """A child process whose output goes to ``log_path``; every wait has a deadline."""

    def __init__(self, command: Sequence[str], log_path: Path, env: Optional[dict] = None, **popen_options):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(list(command), cwd=str(REPO), env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, **popen_options)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not exit within %.0f s; log:\n%s" % (self.log_path.name, timeout, self.log))

    def wait_for_log(self, text: str, timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("%s never logged %r; log:\n%s" % (self.log_path.name, text, self.log))
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        for pid in child_pids(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def close(self) -> None:
        self.kill()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ServerProcess(LoggedProcess):
    """``python -m server ARGS`` in a child process; its output goes to ``log_path``."""

    def __init__(self, args: List[str], log_path: Path, python: str = sys.executable,
                 prefix: Sequence[str] = ()):
        """``prefix`` wraps the command, e.g. ``ip netns exec NS`` (which execs: same pid)."""
        super().__init__([*prefix, python, "-m", "server", *args], log_path,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))


def run_server(args: List[str], tmp_path: Path, timeout: float = DEADLINE_S,
               python: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a server to completion (e.g. one that must refuse its configuration)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([python or sys.executable, "-m", "server", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)
