"""Soak: a server against a trainer for a long time, with worker kills and trainer restarts.

``python -m bench.soak --seconds 600`` runs a real server process (2 loader
workers, shuffled train stream with crops and flips over a PNG-encoded LMDB)
and a trainer in this process that reconnects every ``--restart-every``
seconds, while a worker is SIGKILLed every ``--kill-every`` seconds. Every
second it samples the RSS of the server and of each worker. It reports RSS
at the start and end of the run and the largest seen, per role, and the
delivery count of every (epoch, sample): no sample may arrive twice, and
the only samples missing are those that were in flight to a trainer when it
left (bounded by what ZeroMQ and the kernel held for it).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from client_layer import BatchClient
from harness.children import ServerProcess, child_pids, free_port
from harness.datasets import random_images, write_lmdb

SAMPLES = 400
BATCH = 16
SHAPE = (3, 40, 40)
SAMPLE_BYTES = 3 * 40 * 40  # as uint8 pixels on the wire


def rss_kb(pid: int) -> int:
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


@dataclass
class SoakReport:
    seconds: float
    batches: int = 0
    worker_kills: int = 0
    trainer_restarts: int = 0
    duplicates: int = 0
    missing: int = 0
    complete_epochs: int = 0
    rss: Dict[str, List[int]] = field(default_factory=lambda: {"server": [], "workers": []})
    server_exit: Optional[int] = None  # None: killed, having overrun its stop deadline

    def lines(self) -> List[str]:
        out = ["soak of %.0f s: %d batches, %d worker kills, %d trainer restarts"
               % (self.seconds, self.batches, self.worker_kills, self.trainer_restarts),
               "deliveries over %d complete epochs: %d duplicated, %d missing (in flight at trainer restarts)"
               % (self.complete_epochs, self.duplicates, self.missing)]
        for role, series in self.rss.items():
            if series:
                out.append("RSS %-7s start %6.1f MB, end %6.1f MB, max %6.1f MB"
                           % (role, series[0] / 1024, series[-1] / 1024, max(series) / 1024))
        out.append("server exit status %s" % ("none: killed after its stop deadline" if self.server_exit is None
                                              else self.server_exit))
        return out


def run_soak(seconds: float, workdir: Path, kill_every: float = 2.0, restart_every: float = 5.0) -> SoakReport:
    db = write_lmdb(workdir / "soak_db", random_images(SAMPLES, SHAPE, seed=5), range(SAMPLES), encode=".png")
    port = free_port()
    address = "tcp://127.0.0.1:%d" % port
    args = ["--source", "lmdb:%s" % db, "--bind", address, "--batch-size", str(BATCH), "--workers", "2",
            "--crop-size", "32", "--mirror", "--mean-value", "100", "--log-interval", "10"]
    report = SoakReport(seconds)
    counts: Counter = Counter()
    rng = random.Random(1)
    with ServerProcess(args, workdir / "soak_server.log") as server:
        server.wait_ready()
        started = time.monotonic()
        next_kill, next_restart, next_sample = started + kill_every, started + restart_every, started
        client = BatchClient(address, timeout_s=30)
        try:
            while time.monotonic() - started < seconds:
                batch = client.receive()
                counts.update(zip(batch.epochs.tolist(), batch.indices.tolist()))
                report.batches += 1
                now = time.monotonic()
                if now >= next_sample:
                    report.rss["server"].append(rss_kb(server.process.pid))
                    report.rss["workers"].append(sum(rss_kb(p) for p in child_pids(server.process.pid)))
                    next_sample = now + 1.0
                if now >= next_kill:
                    workers = child_pids(server.process.pid)
                    if workers:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                        report.worker_kills += 1
                    next_kill = now + kill_every
                if now >= next_restart:
                    client.close()
                    client = BatchClient(address, timeout_s=30)
                    report.trainer_restarts += 1
                    next_restart = now + restart_every
        finally:
            client.close()
        report.server_exit = server.stop()
    last_epoch = max(epoch for epoch, _ in counts)
    report.complete_epochs = last_epoch  # epochs 0 .. last_epoch - 1 are over
    report.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    report.missing = sum(1 for e in range(last_epoch) for i in range(SAMPLES) if (e, i) not in counts)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--restart-every", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zfeed-soak-") as workdir:
        report = run_soak(args.seconds, Path(workdir), args.kill_every, args.restart_every)
    print("\n".join(report.lines()))
    return 0 if report.duplicates == 0 and report.server_exit == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
