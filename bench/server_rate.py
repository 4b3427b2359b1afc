"""Images/s that a real zfeed server delivers to a ``BatchClient`` that does not touch the data.

``ServedStream`` starts ``python -m server`` as a child (its own process
group, random free port on 127.0.0.1, the loader benchmark's TRAIN transform:
crop 227, mirror, mean values 104,117,123, batch 64) and receives its
batches in this process. ``receive`` drains batches (the warm-up empties the
slots, ZeroMQ queues and socket buffers the server filled while nobody was
measuring); ``measure`` counts batches for a given time. Receiving decodes
and validates each header and views the frames; the pixels are never read,
so the figure is the server's rate, not a consumer's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import AbstractSet, List, Optional, Sequence

from bench.children import Children
from harness.children import PYTHON, child_env, child_pids, free_port

BATCH = 64
TRANSFORM = ("--crop-size", "227", "--mirror", "--mean-value", "104,117,123", "--batch-size", str(BATCH))
STARTUP_TIMEOUT_S = 60.0
BATCH_TIMEOUT_S = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_command(source: str, port: int, workers: int, wire_format: str = "auto",
                   extra: Sequence[str] = ()) -> List[str]:
    return [PYTHON, "-m", "server", "--source", source, "--workers", str(workers), *TRANSFORM,
            "--wire-format", wire_format, "--bind", "tcp://127.0.0.1:%d" % port, *extra]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat


class ServedStream:
    """A running server and this process's client of it; ``close`` ends both."""

    def __init__(self, children: Children, source: str, workers: int, wire_format: str = "auto",
                 name: str = "server", extra: Sequence[str] = (), cpus: Optional[AbstractSet[int]] = None):
        """``cpus``: pin the server (its supervisor and the workers it forks) to these CPUs."""
        from client_layer import BatchClient

        self.children = children
        port = free_port()
        self.server = children.start(name, server_command(source, port, workers, wire_format, extra), child_env(),
                                     cpus=cpus)
        self.client = BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=STARTUP_TIMEOUT_S)
        self.batch_bytes: Optional[int] = None
        self.wire_bytes = 0  # as received, so compressed where the server compresses
        self._first = True

    def next_batch(self):
        """The next batch (a ``client_layer.batch.Batch``); raises if the server died or went silent."""
        try:
            batch = self.client.receive()
        except TimeoutError:
            self.server.check_running()  # its own error first
            raise
        if self._first:
            self._first = False
            self.client.timeout_s = BATCH_TIMEOUT_S
            self.batch_bytes = sum(spec.nbytes for spec in batch.specs)
        self.wire_bytes += batch.wire_bytes
        return batch

    def receive(self, batches: int) -> None:
        for _ in range(batches):
            self.next_batch()

    def measure(self, seconds: float) -> dict:
        """Batches received in about ``seconds``: images/s, MB/s on the wire, and
        ``worker_cpu_s``, the CPU time the loader workers used meanwhile."""
        workers = self.worker_pids()
        cpu_before = sum(cpu_seconds(pid) for pid in workers)
        wire_bytes_before = self.wire_bytes
        start = time.perf_counter()
        batches = 0
        while True:
            self.next_batch()
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        worker_cpu_s = sum(cpu_seconds(pid) for pid in workers) - cpu_before
        return {"batches": batches, "seconds": elapsed, "images_s": batches * BATCH / elapsed,
                "mb_s": (self.wire_bytes - wire_bytes_before) / elapsed / 1e6, "worker_cpu_s": worker_cpu_s,
                "images_per_worker_cpu_s": batches * BATCH / worker_cpu_s if worker_cpu_s > 0 else 0.0}

    def worker_pids(self) -> List[int]:
        return child_pids(self.server.pid)

    def close(self) -> None:
        self.client.close()
        self.server.check_running()
        self.children.stop(self.server)

    def __enter__(self) -> "ServedStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self.client.close()
            self.children.stop(self.server)
