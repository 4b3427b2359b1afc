"""Child processes of the benchmark: started in their own process group,
joined with a deadline, and killed (group and all) whatever way the run ends.

Every child also gets PDEATHSIG, so even a SIGKILLed benchmark takes its
direct children with it. Their own children die with the group kill; the
server's workers also die with the server (their own PDEATHSIG), but the
queue layer's loaders, like any user's, outlive a SIGKILLed Caffe.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import AbstractSet, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
TERM_GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child failed or overran its deadline; the message ends with its log."""


def print_report(prog: str, log_dir: Path, produce: Callable[[], str]) -> int:
    """A benchmark's ``main()`` after its arguments: print what ``produce()`` returns (status 0),
    or say which child failed and where the logs are (status 1). SIGTERM unwinds like Ctrl-C,
    so every child is ended on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(produce())
    except ChildError as exc:
        print("%s: %s\n(child logs in %s)" % (prog, exc, log_dir), file=sys.stderr)
        return 1
    return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def caffe_python() -> str:
    """The Python with pycaffe: ``$ZFEED_CAFFE_PYTHON``, else ``<repo>/.venv-caffe/bin/python``."""
    path = os.environ.get("ZFEED_CAFFE_PYTHON") or str(REPO / ".venv-caffe" / "bin" / "python")
    if not os.path.isfile(path):
        raise ChildError("no Caffe Python at %s: run `./dev setup` or set ZFEED_CAFFE_PYTHON" % path)
    return path


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _preexec(cpus: Optional[AbstractSet[int]]):
    """What a child runs between fork and exec: die with this process, pinned to ``cpus`` if given."""
    if cpus is None:
        return _die_with_parent
    pinned = frozenset(cpus)

    def pin_and_die_with_parent() -> None:
        _die_with_parent()
        os.sched_setaffinity(0, pinned)
    return pin_and_die_with_parent


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts children and, on ``close()`` (or leaving the ``with``), ends all of them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._running: List[subprocess.Popen] = []
        self._logs: Dict[int, Path] = {}

    def start(self, name: str, command: Sequence[str], env: Optional[Dict[str, str]] = None,
              cpus: Optional[AbstractSet[int]] = None) -> subprocess.Popen:
        """Start ``command``; its stdout is a pipe, its stderr goes to ``<log_dir>/<name>.log``.

        ``cpus``: pin the child to these CPUs before it runs; its threads and
        the processes it forks (a server's workers) inherit the pinning.
        """
        log_path = self.log_dir / ("%s.log" % name)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=log,
                                       stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                       start_new_session=True, preexec_fn=_preexec(cpus))
        self._running.append(process)
        self._logs[process.pid] = log_path
        return process

    def result(self, process: subprocess.Popen, deadline_s: float) -> dict:
        """Wait up to ``deadline_s`` for ``process`` and parse the JSON object it printed last.

        Waits for the process, not for the end of its output: its own children
        (queue-layer loaders) may hold the pipe open until the group is killed.
        """
        try:
            process.wait(deadline_s)
        except subprocess.TimeoutExpired:
            self.stop(process)
            raise ChildError("%s did not finish within %.0f s; its log:\n%s"
                             % (" ".join(process.args[:4]), deadline_s, _tail(self._logs[process.pid])))
        self._kill_group(process)
        out = process.stdout.read()
        process.stdout.close()
        self._forget(process)
        lines = out.decode(errors="replace").strip().splitlines()
        if process.returncode != 0 or not lines:
            raise ChildError("%s exited with status %s; its log:\n%s"
                             % (" ".join(process.args[:4]), process.returncode,
                                _tail(self._logs[process.pid])))
        return json.loads(lines[-1])

    def check_alive(self, process: subprocess.Popen, what: str) -> None:
        if process.poll() is not None:
            raise ChildError("%s exited early with status %s; its log:\n%s"
                             % (what, process.returncode, _tail(self._logs[process.pid])))

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the child's group, then SIGKILL it after ``TERM_GRACE_S``."""
        for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, TERM_GRACE_S)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self._kill_group(process)
        if process.stdout is not None:
            process.stdout.close()
        self._forget(process)

    @staticmethod
    def _kill_group(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # stragglers left in the child's group
        except (ProcessLookupError, PermissionError):
            pass

    def _forget(self, process: subprocess.Popen) -> None:
        if process in self._running:
            self._running.remove(process)

    def close(self) -> None:
        for process in list(self._running):
            self.stop(process)

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def python_env(extra_path: str = str(REPO)) -> Dict[str, str]:
    """The environment of a child: quiet Caffe, the repo importable."""
    return dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=extra_path, PYTHONUNBUFFERED="1")


PYTHON = sys.executable
