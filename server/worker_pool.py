"""Loader worker processes: start, notice death, restart, stop.

Each worker is a forked process with a duplex pipe and a cell of a shared
``progress`` array (see server/worker.py). The pool wakes the supervisor's
poller both when a worker answers (its pipe) and when it dies (its process
sentinel), so a death is noticed at once, not at the next timeout.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Callable, Dict, List, Optional

from server.assembly import Task
from server.worker import IDLE, STARTING, WorkerSetup, loader_worker_main, probe_main

log = logging.getLogger("zfeed.server")

WORKER_JOIN_S = 3.0
PROBE_TIMEOUT_S = 30.0
_FORK = multiprocessing.get_context("fork")


@dataclass(eq=False)  # identity: handles are set members
class WorkerHandle:
    worker_id: int
    process: multiprocessing.Process
    connection: Connection
    outstanding: Dict[int, Task] = field(default_factory=dict)  # task_id -> task


def describe_exit(process: multiprocessing.Process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return "killed by signal %s" % signal.Signals(-code).name
    return "exited with status %s" % code


def new_progress(count: int):
    """The shared array of worker progress cells, created before any fork."""
    progress = _FORK.RawArray("q", count)
    for i in range(count):
        progress[i] = IDLE
    return progress


def probe_sample(setup: WorkerSetup, index: int, timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Read sample ``index`` alone in a disposable forked process with the workers' setup:
    None if that worked, else what happened to the probe."""
    probe = _FORK.Process(target=probe_main, args=(setup, index), name="zfeed-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    if probe.is_alive():
        probe.kill()
        probe.join(1.0)
        return "hung for %.0f s" % timeout_s
    return None if probe.exitcode == 0 else describe_exit(probe)


class WorkerPool:
    """``count`` workers made from ``make_setup(worker_id)``."""

    def __init__(self, make_setup: Callable[[int], WorkerSetup], count: int, progress):
        self.make_setup = make_setup
        self.progress = progress
        self.workers: List[WorkerHandle] = [self._start(i) for i in range(count)]

    def _start(self, worker_id: int) -> WorkerHandle:
        self.progress[worker_id] = STARTING
        ours, theirs = _FORK.Pipe(duplex=True)
        process = _FORK.Process(target=loader_worker_main, args=(self.make_setup(worker_id), theirs),
                                name="zfeed-loader-%d" % worker_id, daemon=True)
        process.start()
        theirs.close()
        return WorkerHandle(worker_id, process, ours)

    def wake_fds(self) -> Dict[int, WorkerHandle]:
        """File descriptors that become readable when a worker answers or dies."""
        fds = {}
        for handle in self.workers:
            fds[handle.connection.fileno()] = handle
            fds[handle.process.sentinel] = handle
        return fds

    def least_busy(self) -> WorkerHandle:
        return min(self.workers, key=lambda h: len(h.outstanding))

    def busy_count(self) -> int:
        return sum(1 for h in self.workers if h.outstanding)

    def assign(self, handle: WorkerHandle, task: Task) -> None:
        """Give ``task`` to ``handle``. A worker that died meanwhile keeps it as
        outstanding: its sentinel wakes the supervisor, which re-issues it."""
        handle.outstanding[task.task_id] = task
        try:
            handle.connection.send(task)
        except OSError:
            pass

    def crashed_index(self, handle: WorkerHandle) -> Optional[int]:
        """The sample a dead worker was reading, if it was reading one."""
        value = self.progress[handle.worker_id]
        return None if value in (IDLE, STARTING) else int(value)

    def died_working(self, handle: WorkerHandle) -> bool:
        """Whether a dead worker had work, or had not yet opened its source: a death that may
        come from the data or the set-up. An idle worker killed from outside (the OOM
        killer, an operator) is neither."""
        return bool(handle.outstanding) or self.progress[handle.worker_id] == STARTING

    def replace(self, handle: WorkerHandle) -> WorkerHandle:
        """Start a new worker in a dead one's place; the caller re-issues its tasks."""
        handle.process.join(1.0)
        handle.connection.close()
        replacement = self._start(handle.worker_id)
        self.workers[self.workers.index(handle)] = replacement
        return replacement

    def stop(self) -> None:
        """Tell every worker to exit; join them, then terminate and kill stragglers."""
        # Forked workers hold copies of every pipe end, so closing ours is no EOF for them.
        for handle in self.workers:
            try:
                handle.connection.send(None)
            except OSError:
                pass  # that worker is gone already
            handle.connection.close()
        deadline = time.monotonic() + WORKER_JOIN_S
        for handle in self.workers:
            handle.process.join(max(0.0, deadline - time.monotonic()))
        for handle in self.workers:
            if handle.process.is_alive():
                log.warning("loader worker %d (pid %d) did not exit, terminating it",
                            handle.worker_id, handle.process.pid)
                handle.process.terminate()
                handle.process.join(1.0)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(1.0)
