"""demo/train.py on SIGTERM: exit status 0 within seconds in every state, saying how far it got.

The trainer runs under the Caffe Python on the prototxts that the containers use
(deploy/demo_setup.py, its layers bound on free ports of 127.0.0.1); its data
servers are real server processes that dial in, as in docker-compose.yml.
Without the handler (NOTE [ SIGTERM in the trainer ]) SIGTERM killed it: status
-15 here, 143 in a container. tests/test_container_stops.py stops it in its image.
"""

import re
import signal
import subprocess
import sys
import time

import pytest

from harness.children import REPO, caffe_python
from demo.nets import SCALE, TEST_BATCH, TRAIN_BATCH
from harness.children import ChildProcess, ServerProcess, free_port, has_loaded, wait_for_handler

pytestmark = pytest.mark.caffe

ITERATIONS = 100000  # training outlasts the test
STOP_BOUND_S = 5.0
STATE_DEADLINE_S = 60.0
TEST_SAMPLES = 300
CAFFE_EXTENSION = "_caffe"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """The demo's data set and prototxts; the layers bind on free ports. (folder, train port, test port)"""
    folder = tmp_path_factory.mktemp("demo")
    ports = free_port(), free_port()
    subprocess.run([sys.executable, str(REPO / "deploy" / "demo_setup.py"), str(folder), "--iterations",
                    str(ITERATIONS), "--train-bind", "tcp://127.0.0.1:%d" % ports[0], "--test-bind",
                    "tcp://127.0.0.1:%d" % ports[1]], cwd=str(REPO), env={"PYTHONPATH": str(REPO)},
                   check=True, capture_output=True, timeout=120)
    return folder, ports


def start_trainer(folder, log_path):
    return ChildProcess([caffe_python(), "demo/train.py", str(folder / "lenet_digits_solver.prototxt"),
                          "--test-samples", str(TEST_SAMPLES)], log_path,
                         env={"PYTHONPATH": str(REPO), "GLOG_minloglevel": "2"})


def start_servers(folder, ports, tmp_path):
    servers = []
    for phase, batch, port in (("train", TRAIN_BATCH, ports[0]), ("test", TEST_BATCH, ports[1])):
        servers.append(ServerProcess(["--source", "lmdb:%s" % (folder / ("%s_lmdb" % phase)), "--phase", phase,
                                      "--batch-size", str(batch), "--mean-file", str(folder / "mean.binaryproto"),
                                      "--scale", repr(SCALE), "--workers", "1",
                                      "--connect", "tcp://127.0.0.1:%d" % port],
                                     tmp_path / ("%s-server.log" % phase)))
    return servers


def wait_for_another(trainer, text):
    """Wait until ``text`` appears once more in the trainer's log than it does now."""
    count = trainer.log.count(text)
    deadline = time.monotonic() + STATE_DEADLINE_S
    while trainer.log.count(text) == count:
        assert trainer.process.poll() is None and time.monotonic() < deadline, trainer.log
        time.sleep(0.05)


@pytest.mark.parametrize("situation", ["starting up", "waiting for data", "training", "server gone"])
def test_trainer_stops_on_sigterm_with_status_0(situation, demo_folder, tmp_path):
    folder, ports = demo_folder
    servers = []
    with start_trainer(folder, tmp_path / "trainer.log") as trainer:
        try:
            if situation == "starting up":
                wait_for_handler(trainer.process.pid, signal.SIGTERM)
                assert not has_loaded(trainer.process.pid, CAFFE_EXTENSION)  # the handler comes first
            elif situation == "waiting for data":
                wait_for_another(trainer, "waiting for data for")
            else:
                servers = start_servers(folder, ports, tmp_path)
                wait_for_another(trainer, "(mean of the last")  # a loss line: training
                if situation == "server gone":
                    for server in servers:
                        server.kill()
                    wait_for_another(trainer, "waiting for data for")
            started = time.monotonic()
            status = trainer.stop(signal.SIGTERM, timeout_s=30)
            took = time.monotonic() - started
        finally:
            for server in servers:
                server.close()
    output = trainer.log
    assert status == 0 and took < STOP_BOUND_S, "status %s after %.1f s:\n%s" % (status, took, output[-3000:])
    assert "train.py: SIGTERM received: stopping" in output and "Traceback" not in output, output[-3000:]
    if situation in ("training", "server gone"):
        assert re.search(r"stopped by SIGTERM after \d+ of %d iterations" % ITERATIONS, output), output[-3000:]
    elif situation == "waiting for data":
        assert "stopped by SIGTERM while setting up the nets" in output, output[-3000:]
