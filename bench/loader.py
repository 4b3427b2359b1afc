"""Part (b), loader throughput: images/s a real Caffe net gets from each data layer.

Every configuration reads the same JPEG LMDB (``bench.dataset``) with the
same TRAIN transform (random crop 227, mirror, mean values 104,117,123,
batch 64) and is timed by ``bench/caffe_feed.py`` in the Caffe Python:

- ``zfeed, N workers``: a real ``python -m server`` with ``--workers N`` on a
  random port and a net whose data layer is ``ZmqDataLayer``;
- ``Caffe Data layer``: Caffe's own LMDB ``Data`` layer (one C++ prefetch thread);
- ``multiprocessing.Queue layer``: ``bench.queue_layer`` with 2 loader processes.

Everything runs on this one machine, so the server, its workers and the
trainer share the same cores.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Dict, List

from bench.children import Children
from harness.children import PYTHON, REPO, caffe_python, child_env, free_port

CAFFE_FEED = str(REPO / "bench" / "caffe_feed.py")
STARTUP_ALLOWANCE_S = 60.0
# A rate far below any configuration's; it only bounds how long a stuck run may take.
SLOWEST_IMAGES_S = 40.0

CONFIGS = (
    ("zfeed, 1 worker", "zmq", 1),
    ("zfeed, 2 workers", "zmq", 2),
    ("Caffe Data layer", "data", 0),
    ("multiprocessing.Queue layer, 2 loaders", "queue", 0),
)


def server_command(lmdb: Path, port: int, workers: int) -> List[str]:
    return [PYTHON, "-m", "server", "--source", "lmdb:%s" % lmdb, "--workers", str(workers),
            "--crop-size", "227", "--mirror", "--mean-value", "104,117,123", "--batch-size", "64",
            "--bind", "tcp://127.0.0.1:%d" % port]


def run_one(children: Children, lmdb: Path, name: str, mode: str, workers: int,
            batches: int, warmup: int) -> dict:
    tag = mode + (str(workers) if workers else "")  # names the child logs: loader-zmq2-server.log, ...
    feed = [caffe_python(), CAFFE_FEED, mode, "--batches", str(batches), "--warmup", str(warmup)]
    server = None
    if mode == "zmq":
        port = free_port()
        server = children.start("loader-%s-server" % tag, server_command(lmdb, port, workers), child_env())
        feed += ["--address", "tcp://127.0.0.1:%d" % port]
    else:
        feed += ["--lmdb", str(lmdb)]
    try:
        trainer = children.start("loader-%s-caffe" % tag, feed, child_env())
        deadline = STARTUP_ALLOWANCE_S + (batches + warmup) * 64 / SLOWEST_IMAGES_S
        result = children.result(trainer, deadline)
        if server is not None:
            server.check_running()
    finally:
        if server is not None:
            children.stop(server)
    return result


def run(children: Children, lmdb: Path, rounds: int, batches: int, warmup: int) -> Dict[str, dict]:
    """``rounds`` rounds over every configuration in turn; the median images/s of each."""
    runs: Dict[str, List[float]] = {name: [] for name, _, _ in CONFIGS}
    for round_number in range(rounds):
        for name, mode, workers in CONFIGS:
            result = run_one(children, lmdb, name, mode, workers, batches, warmup)
            runs[name].append(result["images_s"])
            waited = ", trainer waited %.0f%% of the time" % (100 * result["wait_share"]) \
                if "wait_share" in result else ""
            print("  loader round %d %-40s %6.0f images/s%s"
                  % (round_number + 1, name, result["images_s"], waited), file=sys.stderr)
    return {name: {"images_s": statistics.median(rates), "runs": rates} for name, rates in runs.items()}
