"""Child processes of the demo, the tests and the benchmarks: start, wait for readiness, stop.

The one place that starts zfeed's processes for them. What every child gets:

- its own session (process group): a Ctrl-C in the terminal reaches only
  the parent, which then stops its children in order, and stopping a child
  reaches whatever it started (a server's workers, a queue layer's loaders);
- death with its parent (``server.parent_death``, set between fork and
  exec): a parent killed outright leaves no server running. The signal
  fires when the *thread* that started the child ends, so start children
  from a thread that outlives them (the main thread);
- SIGINT as its program sets it, not ignored because the shell that started
  the parent ignores it (background jobs of a non-interactive shell);
- a deadline on every wait: a child that overruns one is killed with its
  group and joined, and ``ChildError`` says so;
- ``ChildError`` when it fails, carrying its command, its exit status and
  the tail of its log.

A data server is ready when its ``--ready-file`` exists (NOTE [ Ready file ]
in server/ready_file.py), never when its log says so: ``ServerProcess``
passes one and ``wait_ready`` waits for it, and fails with the server's log
if the server exits first.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import AbstractSet, Callable, Dict, List, Optional, Sequence

from server.parent_death import die_with_parent

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEADLINE_S = 30.0  # to get ready, to exit
STOP_DEADLINE_S = 15.0  # SIGTERM to exit: a server joins its workers 3 s and lingers 2 s at most
KILL_WAIT_S = 5.0  # SIGKILL to reaped
POLL_S = 0.02
LOG_TAIL_LINES = 25


class ChildError(RuntimeError):
    """A child failed to start, to get ready, to finish or to stop in time.

    ``command``: its argv (empty when no child ran, e.g. a missing interpreter);
    ``status``: its exit status (-9: killed, e.g. by the harness at a deadline), None while it runs;
    ``log_tail``: the last lines of its log. The message holds all three.
    """

    def __init__(self, problem: str, command: Sequence[str] = (), status: Optional[int] = None,
                 log_tail: str = ""):
        self.problem = problem
        self.command = [str(part) for part in command]
        self.status = status
        self.log_tail = log_tail
        message = problem
        if self.command:
            message += "\ncommand: %s" % shlex.join(self.command)
        if log_tail:
            message += "\nlast lines of its log:\n%s" % log_tail
        super().__init__(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: our environment) with the repository importable, output unbuffered and
    Caffe's C++ log quiet unless ``GLOG_minloglevel`` says otherwise."""
    env = dict(os.environ if base is None else base)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_minloglevel", "2")
    return env


def caffe_python() -> str:
    """The Python with pycaffe: ``$ZFEED_CAFFE_PYTHON``, else ``<repo>/.venv-caffe/bin/python``;
    ChildError when there is none."""
    path = os.environ.get("ZFEED_CAFFE_PYTHON") or str(REPO / ".venv-caffe" / "bin" / "python")
    if not os.path.isfile(path):
        raise ChildError("no Caffe Python at %s: run `./dev setup` (or point ZFEED_CAFFE_PYTHON at a "
                         "Python with pycaffe)" % path)
    return path


def _set_up_child(die_signal: int, cpus: Optional[AbstractSet[int]]) -> Callable[[], None]:
    """What a child runs between fork and exec."""
    pinned = frozenset(cpus) if cpus is not None else None

    def set_up() -> None:
        die_with_parent(die_signal)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    return set_up


def log_tail(path: Optional[Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the log at ``path``."""
    if path is None:
        return "(its output was not logged)"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log at %s)" % path
    return "\n".join(text.splitlines()[-lines:])


def child_pids(pid: int) -> List[int]:
    """Direct children of ``pid`` (from /proc), e.g. a server's loader workers; [] once it is gone."""
    pids: List[int] = []
    try:
        for task in Path("/proc/%d/task" % pid).iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return sorted(set(pids))


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
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


class ChildProcess:
    """A child in its own session that dies with us; every wait has a deadline.

    ``log_path``: where its stdout and stderr go (None: to ours), or only its
    stderr with ``stdout_pipe`` (its stdout is then ``process.stdout``, for a
    result it prints). ``ready_path``: the file whose existence says it is
    ready (``wait_ready``). ``die_signal``: what it gets when we die.
    ``cpus``: pin it (and what it forks) to these CPUs. ``name``: what errors
    call it (default: its log's name, else its program's).
    """

    def __init__(self, command: Sequence[str], log_path: Optional[Path], *, env: Optional[Dict[str, str]] = None,
                 ready_path: Optional[Path] = None, die_signal: int = signal.SIGKILL,
                 cpus: Optional[AbstractSet[int]] = None, stdout_pipe: bool = False, name: Optional[str] = None):
        self.command = [str(part) for part in command]
        self.name = name or (log_path.stem if log_path is not None else Path(self.command[0]).name)
        self.log_path = log_path
        self.ready_path = ready_path
        if ready_path is not None:
            ready_path.unlink(missing_ok=True)  # only this child may say it is ready
        self._log = open(log_path, "wb") if log_path is not None else None
        stdout = subprocess.PIPE if stdout_pipe else self._log
        stderr = self._log if stdout_pipe else subprocess.STDOUT if self._log else None
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                            cwd=str(REPO), env=child_env() if env is None else env,
                                            start_new_session=True, preexec_fn=_set_up_child(die_signal, cpus))
        except BaseException:
            self._close_log()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        """Its whole log so far ("" when not logged)."""
        if self.log_path is None:
            return ""
        return self.log_path.read_text(errors="replace")

    def error(self, problem: str) -> ChildError:
        """A ChildError about this child: ``problem``, its command, status and log tail."""
        return ChildError("%s (pid %d) %s" % (self.name, self.pid, problem), self.command,
                          self.process.returncode, log_tail(self.log_path))

    def check_running(self) -> None:
        """ChildError if it has exited."""
        if self.process.poll() is not None:
            raise self.error("exited with status %s" % self.process.returncode)

    def wait(self, timeout_s: float = DEADLINE_S) -> int:
        """Its exit status; if it overruns ``timeout_s``, it is killed and ChildError raised."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.error("did not exit within %.0f s: killed" % timeout_s) from None

    def wait_ready(self, timeout_s: float = DEADLINE_S) -> dict:
        """Wait until ``ready_path`` exists; what it holds (JSON, or {} when empty). ChildError,
        with its log, if it exits first or is not ready within ``timeout_s``."""
        if self.ready_path is None:
            raise ValueError("this child has no ready file")
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ready_path.exists():
                text = self.ready_path.read_text()
                return json.loads(text) if text.strip() else {}
            if self.process.poll() is not None:
                raise self.error("exited with status %s before it was ready" % self.process.returncode)
            if time.monotonic() > deadline:
                raise self.error("was not ready after %.0f s (no %s)" % (timeout_s, self.ready_path))
            time.sleep(POLL_S)

    def wait_for_log(self, text: str, timeout_s: float = DEADLINE_S) -> None:
        """Wait until its log contains ``text``: for what it reports (readiness is ``wait_ready``)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log:
            if self.process.poll() is not None:
                raise self.error("exited with status %s and never logged %r" % (self.process.returncode, text))
            if time.monotonic() > deadline:
                raise self.error("did not log %r within %.0f s" % (text, timeout_s))
            time.sleep(POLL_S)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = STOP_DEADLINE_S,
             whole_group: bool = False) -> Optional[int]:
        """Send ``signum`` (to its whole group with ``whole_group``) unless it has exited; wait
        ``timeout_s``; then SIGKILL its group. Always joined. Its exit status, None if killed."""
        if self.process.poll() is None:
            try:
                if whole_group:
                    os.killpg(self.pid, signum)
                else:
                    self.process.send_signal(signum)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._kill_group()  # stragglers, e.g. loaders its program left behind
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL its group (it and whatever it started) and join it."""
        self._kill_group()
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait(KILL_WAIT_S)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Kill it with its group if still there, join it, close its log and pipe."""
        try:
            self.kill()
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()
            self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "ChildProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ServerProcess(ChildProcess):
    """``python -m server ARGS --ready-file LOG.ready``; its output in ``log_path``.

    ``prefix`` wraps the command and must exec it (same pid), e.g. ``ip netns
    exec NS``. It gets SIGTERM when we die, so that it stops as on ``docker
    stop`` (its workers die with it).
    """

    def __init__(self, args: Sequence[str], log_path: Path, *, python: str = PYTHON, prefix: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None, cpus: Optional[AbstractSet[int]] = None,
                 stdout_pipe: bool = False, name: Optional[str] = None):
        ready_path = log_path.with_suffix(".ready")
        super().__init__([*prefix, python, "-m", "server", *args, "--ready-file", str(ready_path)], log_path,
                         env=env, ready_path=ready_path, die_signal=signal.SIGTERM, cpus=cpus,
                         stdout_pipe=stdout_pipe, name=name)


def run_server(args: Sequence[str], timeout_s: float = DEADLINE_S,
               python: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``python -m server ARGS`` to its end (e.g. one that must refuse its configuration),
    its output captured as text; ChildError if it overruns ``timeout_s``."""
    command = [python or PYTHON, "-m", "server", *args]
    try:
        return subprocess.run(command, cwd=str(REPO), env=child_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise ChildError("did not exit within %.0f s: killed" % timeout_s, command,
                         log_tail="\n".join(output.splitlines()[-LOG_TAIL_LINES:])) from None
