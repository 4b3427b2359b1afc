"""``python -m demo`` end to end: real data servers, real Caffe, a net that learns.

The demo runs as a child in its own session (harness.children), joined
with a deadline; on overrun it is killed and its children follow it
(PDEATHSIG). These tests fail, never skip, when the Caffe Python is missing
(see caffe_runner).
"""

import os
import re
import signal
import sys

import pytest

from caffe_runner import caffe_python
from harness.children import ChildProcess, alive, child_env

pytestmark = pytest.mark.caffe

DEMO_TIMEOUT_S = 120
ITERATIONS = 100
MIN_ACCURACY = 0.8


@pytest.fixture
def start_demo(tmp_path):
    """Starts ``python -m demo ARGS`` (the trainer under ``python``, default the Caffe Python), its
    output in a log; every demo started is killed with its session at the end of the test."""
    started = []

    def start(*args, python=None):
        env = child_env(dict(os.environ, ZFEED_CAFFE_PYTHON=python or caffe_python()))
        demo = ChildProcess([sys.executable, "-m", "demo", *map(str, args)],
                            tmp_path / ("demo-%d.log" % len(started)), env=env)
        started.append(demo)
        return demo
    yield start
    for demo in started:
        demo.close()


def finish(demo, timeout_s=DEMO_TIMEOUT_S):
    """The demo's exit status and whole output once it exits; ChildError (it is then killed) on overrun."""
    return demo.wait(timeout_s), demo.log


def server_pids(output):
    pids = [int(pid) for pid in re.findall(r"data server \(pid (\d+)\) serving", output)]
    assert len(pids) == 2, output
    return pids


def summary_value(output, key):
    match = re.search(r"^%s: (.*)$" % re.escape(key), output, re.MULTILINE)
    assert match, "no %r line in the demo's output:\n%s" % (key, output)
    return match.group(1)


def test_demo_trains_a_net_that_learns(tmp_path, start_demo):
    workdir = tmp_path / "work"
    demo = start_demo("--iterations", ITERATIONS, "--workdir", workdir)
    status, output = finish(demo)
    assert status == 0, output
    assert "== zfeed demo summary ==" in output
    first, last = map(float, re.match(r"([\d.]+) -> ([\d.]+)", summary_value(output, "loss")).groups())
    assert last < 0.5 * first, output
    accuracy = float(summary_value(output, "test accuracy").split()[0])
    assert accuracy >= MIN_ACCURACY, output
    assert summary_value(output, "result") == "PASS"
    assert "demo: train data server exited 0" in output
    assert "demo: test data server exited 0" in output
    assert re.search(r"^demo: PASS in [\d.]+ s$", output, re.MULTILINE), output
    assert not any(alive(pid) for pid in server_pids(output))
    assert not workdir.exists(), "a successful run without --keep leaves no work folder"


def test_demo_fails_and_stops_the_servers_when_the_trainer_fails(tmp_path, start_demo):
    # This Python has no pycaffe: train.py dies at ``import caffe`` once the servers run.
    workdir = tmp_path / "work"
    demo = start_demo("--iterations", ITERATIONS, "--workdir", workdir, python=sys.executable)
    status, output = finish(demo)
    assert "No module named 'caffe'" in output
    assert status == 1, output
    assert "demo: train data server exited 0" in output
    assert "demo: test data server exited 0" in output
    assert re.search(r"^demo: FAIL in", output, re.MULTILINE), output
    assert not any(alive(pid) for pid in server_pids(output))
    assert (workdir / "logs" / "train-server.log").exists(), "a failed run keeps its logs"


def test_ctrl_c_stops_trainer_and_servers(tmp_path, start_demo):
    demo = start_demo("--iterations", 100000, "--workdir", tmp_path / "work")
    demo.wait_for_log("\niter ", timeout_s=DEMO_TIMEOUT_S)  # the trainer's first line: training is on
    demo.process.send_signal(signal.SIGINT)
    status = demo.wait(30)
    output = demo.log
    assert status == 130, output
    assert "demo: interrupted" in output
    assert "demo: train data server exited 0" in output
    assert "demo: test data server exited 0" in output
    assert not any(alive(pid) for pid in server_pids(output))
