"""Train a net with pycaffe's SGDSolver and report what zfeed fed it.

Usage: train.py SOLVER --test-samples N [--display K] [--min-accuracy A] [--max-loss-ratio R]

Runs the solver's ``max_iter`` iterations one ``step(1)`` at a time (so
every iteration's loss can be read) and tests every ``test_interval``
iterations, and after the last, with ``test_iter`` forward passes of the
test net. The solver's own periodic test is switched off in the copy of
SOLVER that pycaffe gets (the interval is set beyond ``max_iter``), because
its results never reach Python.

Checks, and exits with status 1 when one fails (0 when all hold):
  * every test pass saw each of the N test samples exactly once (dataset
    indices from the layer's batch headers), so accuracy is over the test set;
  * the mean loss of the last K iterations is at most R times that of the
    first K (K is ``--display``, at most half the run);
  * the final test accuracy is at least A.

Output ends with a ``== zfeed demo summary ==`` block of ``key: value``
lines. Runs on the Caffe Python (3.8+) with numpy, pycaffe and
``client_layer`` only; set GLOG_minloglevel=2 to quiet Caffe.

SIGTERM (``docker stop``, a deleted Kubernetes Job) stops the trainer in
every state, starting up, waiting for data, training or testing, with exit
status 0 and the line ``train.py: SIGTERM received: stopping`` at once, then
how far training got: NOTE [ SIGTERM in the trainer ].
"""

from __future__ import annotations

# NOTE [ SIGTERM in the trainer ]
# The handler is installed first, before the imports below (Caffe, numpy: seconds on a cold
# start): a container's PID 1 without a handler for SIGTERM never gets it (the kernel drops it),
# and any other process dies with status 143. It raises ``TrainingStopped`` where Python runs
# next in the main thread:
# - between solver steps, or in this script's own code;
# - inside a step, in its Python layers, whose forward (the data layer's wait for a batch
#   included: it polls every 0.1 s) runs before the step updates any weight. The exception leaves
#   Caffe's C++ through boost.python and surfaces from ``solver.step``, so the step is abandoned
#   before it changes the net: training stops as it was after the last whole step.
# Python runs signal handlers between bytecodes only: a step that runs no Python for longer than
# the grace period (a large net on a CPU) outlasts it, and the container engine kills the trainer.
# ``TrainingStopped`` is a SystemExit with status 0: raised where nothing catches it (during the
# imports), it ends the process quietly with 0; ``main`` catches it to say how far training got.
# Third-party code can swallow it (a bare ``except:``) or turn it into another exception (numpy's
# C code reports an exception in an import it makes as ``ImportError``). So the handler also notes
# the signal: an exception out of the imports or ``main`` after SIGTERM counts as the stop, and
# ``stop_if_requested()`` stops after a swallowed one, after the imports and after each step.
# A second SIGTERM is ignored, so that it cannot interrupt the stopping.

import os
import signal
import sys


class TrainingStopped(SystemExit):
    """SIGTERM arrived; see NOTE [ SIGTERM in the trainer ]."""

    def __init__(self) -> None:
        super().__init__(0)


_stop_requested = False


def _stop_training(_signum, _frame) -> None:
    global _stop_requested
    _stop_requested = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(2, b"train.py: SIGTERM received: stopping\n")  # not print: the main thread may be inside one
    raise TrainingStopped()


def stop_if_requested() -> None:
    """Raise ``TrainingStopped`` if SIGTERM came and its exception was swallowed on the way."""
    if _stop_requested:
        raise TrainingStopped()


# This file is a script, never imported: the handler goes in before anything slow.
signal.signal(signal.SIGTERM, _stop_training)

try:
    import argparse
    import tempfile
    import time

    import caffe
    import numpy as np
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
except BaseException:
    if _stop_requested:  # the handler's exception, as whatever the imports made of it
        raise TrainingStopped() from None
    raise

SUMMARY_TITLE = "== zfeed demo summary =="
DATA_LAYER = "data"
NEVER = 2**31 - 1  # the largest int32 test_interval


class Counters:
    """Time spent in a phase and, within it, waiting for the data layer's client."""

    def __init__(self, layer):
        self.layer = layer
        self.seconds = 0.0
        self.wait_s = 0.0

    def run(self, function):
        client = self.layer.client
        wait_before = client.wait_s
        started = time.perf_counter()
        result = function()
        self.seconds += time.perf_counter() - started
        self.wait_s += client.wait_s - wait_before
        return result

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.seconds if self.seconds > 0 else 0.0


def load_solver_param(path: str) -> caffe_pb2.SolverParameter:
    param = caffe_pb2.SolverParameter()
    with open(path) as f:
        text_format.Merge(f.read(), param)
    return param


def make_solver(param: caffe_pb2.SolverParameter, directory: str) -> caffe.SGDSolver:
    """An SGDSolver for ``param`` with Caffe's own periodic test switched off."""
    untested = caffe_pb2.SolverParameter()
    untested.CopyFrom(param)
    # Caffe insists on a positive interval when there are test nets: one it never reaches.
    untested.test_interval = NEVER
    untested.test_initialization = False
    handle, path = tempfile.mkstemp(suffix=".solver.prototxt", dir=directory)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text_format.MessageToString(untested))
        return caffe.SGDSolver(path)
    finally:
        os.unlink(path)


def data_layer(net: caffe.Net):
    """The ``ZmqDataLayer`` object of ``net`` (pycaffe hands out Python layers as themselves)."""
    layer = net.layers[list(net._layer_names).index(DATA_LAYER)]
    if not hasattr(layer, "client"):
        raise TypeError("layer %r is a %s, not a ZmqDataLayer" % (DATA_LAYER, type(layer).__name__))
    return layer


def test_pass(net: caffe.Net, layer, test_iter: int, test_samples: int):
    """Run one pass; returns (accuracy, loss). Raises ValueError unless it saw each test sample once."""
    accuracies, losses, seen = [], [], []
    for _ in range(test_iter):
        net.forward()
        accuracies.append(float(net.blobs["accuracy"].data))
        losses.append(float(net.blobs["loss"].data))
        seen.append(np.array(layer.last_batch_indices))
    seen = np.sort(np.concatenate(seen))
    if not np.array_equal(seen, np.arange(test_samples)):
        raise ValueError("a test pass of %d batches saw %d samples (%d distinct), not each of the %d "
                         "test samples once: make test_iter x test batch size equal the test set"
                         % (test_iter, len(seen), len(np.unique(seen)), test_samples))
    # Equal batches: the mean of the batch accuracies is the accuracy over the pass.
    return float(np.mean(accuracies)), float(np.mean(losses))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("solver", help="solver prototxt (its net's data layers are ZmqDataLayers)")
    parser.add_argument("--test-samples", type=int, required=True,
                        help="size of the test set, which every test pass must cover once")
    parser.add_argument("--display", type=int, default=50, help="iterations per loss line")
    parser.add_argument("--min-accuracy", type=float, default=0.8)
    parser.add_argument("--max-loss-ratio", type=float, default=0.5,
                        help="the last loss window's mean must be at most this times the first's")
    return parser.parse_args(argv)


class Run:
    """What a training run measured, for the summary."""

    def __init__(self, batch_size: int, test_iter: int, test_samples: int):
        self.batch_size = batch_size
        self.test_iter = test_iter
        self.test_samples = test_samples
        self.losses = []  # one per iteration
        self.accuracy = float("nan")  # of the last test pass
        self.train = self.test = None  # Counters


def train_and_test(solver, param, args) -> Run:
    """Train ``param.max_iter`` iterations, testing before, every ``test_interval`` and after."""
    iterations, test_iter = param.max_iter, param.test_iter[0]
    test_interval = param.test_interval or iterations
    test_net = solver.test_nets[0]
    run = Run(solver.net.blobs["data"].data.shape[0], test_iter, args.test_samples)
    run.train = Counters(data_layer(solver.net))
    run.test = Counters(data_layer(test_net))
    print("training %d iterations of %d images; testing %d x %d images every %d iterations"
          % (iterations, run.batch_size, test_iter, test_net.blobs["data"].data.shape[0], test_interval),
          flush=True)

    def run_test() -> None:
        # What Caffe's Solver::Test does first: the test net computes with the trained weights.
        test_net.share_with(solver.net)
        run.accuracy, loss = run.test.run(
            lambda: test_pass(test_net, run.test.layer, test_iter, args.test_samples))
        print("iter %5d  test accuracy %.4f  test loss %.4f" % (solver.iter, run.accuracy, loss), flush=True)

    run_test()
    display_losses = []
    while solver.iter < iterations:
        run.train.run(lambda: solver.step(1))
        stop_if_requested()
        run.losses.append(float(solver.net.blobs["loss"].data))
        display_losses.append(run.losses[-1])
        if solver.iter % args.display == 0 or solver.iter == iterations:
            print("iter %5d  loss %.4f (mean of the last %d)"
                  % (solver.iter, np.mean(display_losses), len(display_losses)), flush=True)
            display_losses = []
        if solver.iter % test_interval == 0 and solver.iter != iterations:
            run_test()
    run_test()
    return run


def report(run: Run, args) -> int:
    """Print the summary block; returns the exit status (1 when a check failed)."""
    window = max(1, min(args.display, len(run.losses) // 2))
    first_loss, last_loss = float(np.mean(run.losses[:window])), float(np.mean(run.losses[-window:]))
    failures = []
    if not last_loss <= args.max_loss_ratio * first_loss:
        failures.append("loss did not fall to %.2f x its start" % args.max_loss_ratio)
    if not run.accuracy >= args.min_accuracy:
        failures.append("test accuracy below %.2f" % args.min_accuracy)
    print(SUMMARY_TITLE)
    print("iterations: %d x %d images" % (len(run.losses), run.batch_size))
    print("loss: %.4f -> %.4f (mean of the first and last %d iterations; iteration 1: %.4f)"
          % (first_loss, last_loss, window, run.losses[0]))
    print("test accuracy: %.4f (%d of %d test images, one pass of %d batches)"
          % (run.accuracy, round(run.accuracy * run.test_samples), run.test_samples, run.test_iter))
    print("training speed: %.0f images/s (%.1f s in solver.step)"
          % (len(run.losses) * run.batch_size / run.train.seconds, run.train.seconds))
    print("waited for data: %.1f%% of training time, %.1f%% of test time"
          % (100.0 * run.train.wait_share, 100.0 * run.test.wait_share))
    print("result: %s" % ("FAIL: " + "; ".join(failures) if failures else "PASS"), flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    param = load_solver_param(args.solver)
    caffe.set_mode_cpu()
    solver = None
    try:
        stop_if_requested()
        # Making the solver sets up its nets: each data layer waits for its first batch.
        solver = make_solver(param, os.path.dirname(os.path.abspath(args.solver)))
        stop_if_requested()
        return report(train_and_test(solver, param, args), args)
    except BaseException:
        if not _stop_requested:
            raise
        # TrainingStopped, or what Caffe or a library made of it.
        where = "after %d of %d iterations" % (solver.iter, param.max_iter) if solver else "while setting up the nets"
        print("train.py: stopped by SIGTERM %s; no summary" % where, flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
