"""``python -m demo``: train a small LeNet on scikit-learn's digits, fed by two zfeed servers.

Steps: build the data set (``demo.dataset``); start a train and a test data
server on free ports of 127.0.0.1 and wait until each has written its ready
file; fill in the prototxt templates of this folder with the endpoints the
servers announce; run ``demo/train.py`` under the Caffe Python
(``$ZFEED_CAFFE_PYTHON``, else ``<repo>/.venv-caffe/bin/python``), whose
summary block and exit status are the demo's verdict; stop both servers with
SIGTERM and check they exit 0 (the server exits 0 after a clean stop, see
server/supervisor.py ``NOTE [ Shutdown protocol ]``). The servers are
stopped whatever happens (error, Ctrl-C, SIGTERM), and die with the demo
should it be killed outright (``harness.children``).

Exit status: 0 when training passed its checks and both servers exited 0;
the trainer's status when it failed; 1 for any other failure; 2 for bad
options; 130 on Ctrl-C; 143 on SIGTERM. The work folder is removed at the
end unless ``--keep`` is given or the demo failed (its logs are then worth
reading).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from demo.dataset import IMAGE_SIDE, DigitsDataset, build_dataset
from demo.nets import DEFAULT_ITERATIONS, SCALE, SEED, TEST_BATCH, TRAIN_BATCH, write_prototxts
from harness.children import ChildError, ChildProcess, ServerProcess, caffe_python, free_port

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
DISPLAY = 50
MIN_ACCURACY = 0.8
READY_TIMEOUT_S = 30.0
TRAINER_TIMEOUT_S = 600.0
TRAINER_STOP_S = 5.0
WATCH_INTERVAL_S = 0.2  # how often the servers are checked while the trainer runs


class Interrupted(Exception):
    """SIGTERM arrived; raised so that ``finally`` blocks stop the children."""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Train a LeNet-style Caffe net on scikit-learn's digits, fed by two zfeed "
                    "data servers on this machine, and check that it learns.")
    parser.add_argument("--workdir", type=Path,
                        help="folder for images, LMDBs, prototxts and logs; must be new or empty "
                             "(default: a fresh temporary folder)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="training iterations of %d images (default %d)" % (TRAIN_BATCH, DEFAULT_ITERATIONS))
    parser.add_argument("--keep", action="store_true", help="keep the work folder after a successful run")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (the loss of the first and last iterations is compared)")
    if args.workdir is not None and args.workdir.exists() and (
            not args.workdir.is_dir() or any(args.workdir.iterdir())):
        parser.error("--workdir %s exists and is not an empty folder: choose a new one" % args.workdir)
    return args


def server_args(dataset: DigitsDataset, lmdb: Path, phase: str, batch_size: int) -> List[str]:
    return ["--source", "lmdb:%s" % lmdb, "--phase", phase, "--batch-size", str(batch_size),
            "--workers", "1", "--seed", str(SEED), "--mean-file", str(dataset.mean_file),
            "--scale", repr(SCALE), "--bind", "tcp://127.0.0.1:%d" % free_port()]


def trainer_command(caffe_python: str, solver_path: Path, test_count: int) -> List[str]:
    """How the demo runs train.py (the trainer image runs the same, tests/test_deploy.py checks)."""
    return [caffe_python, str(TRAIN_SCRIPT), str(solver_path), "--test-samples", str(test_count),
            "--display", str(DISPLAY), "--min-accuracy", str(MIN_ACCURACY)]


def run_trainer(caffe_python: str, solver_path: Path, test_count: int,
                servers: List[ServerProcess]) -> int:
    """Run train.py under ``caffe_python``, its output on ours; returns its exit status.

    Raises ChildError when a server exits meanwhile (the trainer would only
    time out waiting for data) or the trainer overruns ``TRAINER_TIMEOUT_S``.
    """
    command = trainer_command(caffe_python, solver_path, test_count)
    deadline = time.monotonic() + TRAINER_TIMEOUT_S
    trainer = ChildProcess(command, None, name="the trainer")  # its output is the demo's
    try:
        while True:
            try:
                return trainer.process.wait(WATCH_INTERVAL_S)
            except subprocess.TimeoutExpired:
                pass
            for server in servers:
                server.check_running()
            if time.monotonic() > deadline:
                raise trainer.error("did not finish within %.0f s" % TRAINER_TIMEOUT_S)
    finally:
        trainer.stop(timeout_s=TRAINER_STOP_S)
        trainer.close()


def stop_servers(servers: Dict[str, ServerProcess]) -> Dict[str, Optional[int]]:
    """Stop every server, print how each ended; returns name -> exit status (None: killed)."""
    statuses = {}
    for name, server in servers.items():
        statuses[name] = status = server.stop()
        server.close()
        print("demo: %s data server %s" % (name, "exited 0" if status == 0 else "was killed"
                                           if status is None else "exited %d" % status), flush=True)
    return statuses


def run_demo(workdir: Path, iterations: int, caffe_python: str) -> int:
    """Everything but the work folder's life cycle; returns the exit status."""
    started = time.monotonic()
    print("demo: building the digits data set in %s" % workdir, flush=True)
    dataset = build_dataset(workdir, seed=SEED)
    print("demo: %d train and %d test images, %dx%d gray, %d classes (%.1f s)"
          % (dataset.train_count, dataset.test_count, IMAGE_SIDE, IMAGE_SIDE, dataset.class_count,
             time.monotonic() - started), flush=True)
    logs = workdir / "logs"
    logs.mkdir()
    servers: Dict[str, ServerProcess] = {}
    statuses: Dict[str, Optional[int]] = {}
    try:
        for name, lmdb, batch in (("train", dataset.train_lmdb, TRAIN_BATCH),
                                  ("test", dataset.test_lmdb, TEST_BATCH)):
            servers[name] = ServerProcess(server_args(dataset, lmdb, name, batch), logs / ("%s-server.log" % name),
                                          name="the %s data server" % name)
        addresses = {}
        for name, server in servers.items():
            addresses[name] = server.wait_ready(READY_TIMEOUT_S)["bind"][0]
            print("demo: %s data server (pid %d) serving on %s; log %s"
                  % (name, server.pid, addresses[name], server.log_path), flush=True)
        solver_path = write_prototxts(workdir, dataset, addresses["train"], addresses["test"], iterations)
        print("demo: training with %s" % solver_path, flush=True)
        train_status = run_trainer(caffe_python, solver_path, dataset.test_count, list(servers.values()))
    finally:
        statuses = stop_servers(servers)
    servers_ok = all(status == 0 for status in statuses.values())
    print("demo: %s in %.1f s" % ("PASS" if train_status == 0 and servers_ok else "FAIL",
                                  time.monotonic() - started), flush=True)
    if train_status != 0:
        return train_status if train_status > 0 else 1
    return 0 if servers_ok else 1


def _raise_interrupted(_signum, _frame) -> None:
    raise Interrupted()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        trainer_python = caffe_python()
    except ChildError as exc:
        print("demo: error: %s" % exc, file=sys.stderr)
        return 1
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="zfeed-demo-"))
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    status = 1
    try:
        status = run_demo(workdir, args.iterations, trainer_python)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        status = 130
    except Interrupted:
        print("demo: terminated", file=sys.stderr)
        status = 143
    except ChildError as exc:
        print("demo: error: %s" % exc, file=sys.stderr)
    finally:
        if status == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("demo: kept %s" % workdir, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
