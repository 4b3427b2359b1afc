"""The benchmarks' children: all of them ended whatever way a run ends, and the result a
measuring child prints.

Starting, deadlines, death with the parent and ``ChildError`` are
``harness.children``'s. A benchmark's child prints its result as one JSON
object on the last line of its stdout; its stderr goes to
``<log_dir>/<name>.log``. The server's workers die with the server, but the
queue layer's loaders, like any user's, outlive a SIGKILLed Caffe: a
child's whole group is killed once it has exited.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import AbstractSet, Callable, Dict, List, Optional, Sequence

from harness.children import ChildError, ChildProcess

TERM_GRACE_S = 3.0


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


class Children:
    """Starts children and, on ``close()`` (or leaving the ``with``), ends all of them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._running: List[ChildProcess] = []

    def start(self, name: str, command: Sequence[str], env: Optional[Dict[str, str]] = None,
              cpus: Optional[AbstractSet[int]] = None) -> ChildProcess:
        """Start ``command``; its stdout is a pipe, its stderr goes to ``<log_dir>/<name>.log``.

        ``cpus``: pin the child to these CPUs before it runs; its threads and
        the processes it forks (a server's workers) inherit the pinning.
        """
        child = ChildProcess(command, self.log_dir / ("%s.log" % name), env=env, cpus=cpus, stdout_pipe=True)
        self._running.append(child)
        return child

    def result(self, child: ChildProcess, deadline_s: float) -> dict:
        """Wait up to ``deadline_s`` for ``child`` and parse the JSON object it printed last.

        Waits for the process, not for the end of its output: its own children
        (queue-layer loaders) may hold the pipe open until its group is killed.
        """
        status = child.wait(deadline_s)
        child.stop()  # it has exited: this kills what it left behind, which ends its output
        out = child.process.stdout.read()
        self.stop(child)
        lines = out.decode(errors="replace").strip().splitlines()
        if status != 0 or not lines:
            raise child.error("exited with status %s%s" % (status, "" if lines else " and printed no result"))
        return json.loads(lines[-1])

    def stop(self, child: ChildProcess) -> Optional[int]:
        """SIGTERM the child's group, then SIGKILL it after ``TERM_GRACE_S``; its exit status
        (None: killed)."""
        try:
            return child.stop(signal.SIGTERM, TERM_GRACE_S, whole_group=True)
        finally:
            child.close()
            if child in self._running:
                self._running.remove(child)

    def close(self) -> None:
        for child in list(self._running):
            self.stop(child)

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
