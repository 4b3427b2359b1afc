"""``python -m demo`` end to end: real data servers, real Caffe, a net that learns.

The demo runs as a child in its own session, joined with a deadline; on
overrun it is killed and its children follow it (PDEATHSIG). These tests
fail, never skip, when the Caffe Python is missing (see caffe_runner).
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from caffe_runner import REPO, caffe_python
from processes import alive

pytestmark = pytest.mark.caffe

DEMO_TIMEOUT_S = 120
ITERATIONS = 100
MIN_ACCURACY = 0.8


def start_demo(*args, python=None):
    env = dict(os.environ, ZFEED_CAFFE_PYTHON=python or caffe_python(), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "demo", *map(str, args)], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(demo, timeout=DEMO_TIMEOUT_S):
    """The demo's whole output once it exits; kills its session and fails the test on overrun."""
    try:
        output, _ = demo.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        output, _ = demo.communicate()
        pytest.fail("the demo did not finish within %d s; output:\n%s" % (timeout, output), pytrace=False)
    return output


def server_pids(output):
    pids = [int(pid) for pid in re.findall(r"data server \(pid (\d+)\) serving", output)]
    assert len(pids) == 2, output
    return pids


def summary_value(output, key):
    match = re.search(r"^%s: (.*)$" % re.escape(key), output, re.MULTILINE)
    assert match, "no %r line in the demo's output:\n%s" % (key, output)
    return match.group(1)


def test_demo_trains_a_net_that_learns(tmp_path):
    workdir = tmp_path / "work"
    demo = start_demo("--iterations", ITERATIONS, "--workdir", workdir)
    output = finish(demo)
    assert demo.returncode == 0, output
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


def test_demo_fails_and_stops_the_servers_when_the_trainer_fails(tmp_path):
    # This Python has no pycaffe: train.py dies at ``import caffe`` once the servers run.
    workdir = tmp_path / "work"
    demo = start_demo("--iterations", ITERATIONS, "--workdir", workdir, python=sys.executable)
    output = finish(demo)
    assert "No module named 'caffe'" in output
    assert demo.returncode == 1, output
    assert "demo: train data server exited 0" in output
    assert "demo: test data server exited 0" in output
    assert re.search(r"^demo: FAIL in", output, re.MULTILINE), output
    assert not any(alive(pid) for pid in server_pids(output))
    assert (workdir / "logs" / "train-server.log").exists(), "a failed run keeps its logs"


def test_ctrl_c_stops_trainer_and_servers(tmp_path):
    demo = start_demo("--iterations", 100000, "--workdir", tmp_path / "work")
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True)
    reader.start()
    seen = []
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while not (seen and seen[-1].startswith("iter ")):  # the trainer's first line: training is on
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            os.killpg(demo.pid, signal.SIGKILL)
            pytest.fail("the demo never started training; output:\n" + "".join(seen), pytrace=False)
    os.kill(demo.pid, signal.SIGINT)
    try:
        demo.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    reader.join(5)
    output = "".join(seen + list(lines.queue))
    assert demo.returncode == 130, output
    assert "demo: interrupted" in output
    assert "demo: train data server exited 0" in output
    assert "demo: test data server exited 0" in output
    assert not any(alive(pid) for pid in server_pids(output))
