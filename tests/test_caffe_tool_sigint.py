"""Ctrl-C while the layer waits for data, under a host process that owns SIGINT (issue 15.1).

No Caffe command-line binary is on PyPI, so tests/sigint_host.c stands in for
``caffe train``: it installs a flag-setting SIGINT handler as Caffe's
SignalHandler does, then embeds the Caffe Python and steps a real pycaffe
solver whose train net takes data from a ZmqDataLayer. It is compiled here
with gcc against that Python's libpython (``python3.X-config --embed``).
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from caffe_runner import caffe_python
from harness.children import ChildProcess, ServerProcess, free_port
from harness.datasets import random_images, write_npz
from test_layer_in_solver import LAYER, NET

pytestmark = pytest.mark.caffe

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def sigint_host(tmp_path_factory):
    """The stand-in, compiled against the Caffe Python's libpython."""
    python = caffe_python()
    bindir, version = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('BINDIR'), sysconfig.get_python_version())"],
        capture_output=True, text=True, check=True, timeout=60).stdout.split()
    config = Path(bindir) / ("python%s-config" % version)
    if not config.is_file():
        pytest.fail("no %s: the Caffe Python needs its headers and libpython (pyenv builds have them; "
                    "Debian's Python: apt-get install python%s-dev)" % (config, version), pytrace=False)
    flags = subprocess.run([str(config), "--embed", "--cflags", "--ldflags"], capture_output=True, text=True,
                           check=True, timeout=60).stdout.split()
    # Extension modules (numpy, caffe) need libpython's symbols when it is linked statically.
    link_for_shared = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LINKFORSHARED'))"],
                                     capture_output=True, text=True, check=True, timeout=60).stdout.split()
    binary = tmp_path_factory.mktemp("sigint_host") / "sigint_host"
    compiled = subprocess.run(["gcc", "-o", str(binary), str(HERE / "sigint_host.c"), *flags, *link_for_shared],
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    return binary


def interrupt(process, stopped_line):
    """Send SIGINT to ``process``; seconds until it logs ``stopped_line`` (not until it has
    exited: tearing down Caffe and Python takes a further half second or so)."""
    process.process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    process.wait_for_log(stopped_line, timeout_s=30)
    return time.monotonic() - sent


def test_sigint_while_waiting_for_data_snapshots_and_stops_within_a_second(tmp_path, sigint_host):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(64, (3, 32, 32), seed=5),
                                  [i % 10 for i in range(64)])
    port = free_port()
    net = tmp_path / "net.prototxt"
    net.write_text(NET % {"layers": LAYER % ("TRAIN", json.dumps({"address": "tcp://127.0.0.1:%d" % port,
                                                                 "timeout_s": 60}))})
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s" base_lr: 0.001 lr_policy: "fixed" max_iter: 100000 display: 0 solver_mode: CPU\n'
                      'snapshot_prefix: "%s"\n' % (net, tmp_path / "snap"))
    command = [str(sigint_host), caffe_python(), str(HERE / "caffe_scripts" / "sigint_solver.py"), "100000", str(solver)]
    with ServerProcess(["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "16"],
                       tmp_path / "server.log") as server, \
            ChildProcess(command, tmp_path / "host.log") as host:
        host.wait_for_log("iteration 20", timeout_s=60)
        assert server.stop() == 0
        done, deadline = -1, time.monotonic() + 30
        while host.log.count("iteration ") != done:  # until what was buffered is used up: the layer waits
            assert time.monotonic() < deadline, host.log
            done = host.log.count("iteration ")
            time.sleep(1.0)
        stopped_after = interrupt(host, "SIGINT: snapshot and stop after iteration")
        status = host.wait(10)
    assert status == 0, host.log
    assert stopped_after < 1.0, (stopped_after, host.log)
    assert "SIGINT while waiting for data (connected to tcp://127.0.0.1:%d): passed on to Caffe" % port in host.log
    iteration = int(host.log.split("SIGINT: snapshot and stop after iteration ")[1].split()[0])
    assert iteration == done + 1  # the interrupted iteration completed on the previous batch
    assert (tmp_path / ("snap_iter_%d.caffemodel" % iteration)).is_file()
    assert (tmp_path / ("snap_iter_%d.solverstate" % iteration)).is_file()


def test_under_pycaffe_sigint_while_waiting_is_a_keyboard_interrupt_at_once(tmp_path):
    """Where Python owns SIGINT (pycaffe, ``caffe test``), nothing is lent: Python's own
    handler raises KeyboardInterrupt in the wait."""
    port = free_port()
    net = tmp_path / "net.prototxt"
    net.write_text(NET % {"layers": LAYER % ("TEST", json.dumps({"address": "tcp://127.0.0.1:%d" % port,
                                                                "timeout_s": 60}))})
    command = [caffe_python(), str(HERE / "caffe_scripts" / "run_net.py"), str(net), "test", "1",
               str(tmp_path / "out.npz"), "data"]
    # Python installs no handler where SIGINT is ignored, as it is for background jobs of a
    # non-interactive shell, which may have started this test run: the harness's children get
    # SIGINT's default disposition back.
    with ChildProcess(command, tmp_path / "pycaffe.log") as trainer:
        trainer.wait_for_log("waiting for data for 5 s", timeout_s=60)  # for its first batch, at set-up
        stopped_after = interrupt(trainer, "KeyboardInterrupt")
        status = trainer.wait(10)
    assert status != 0 and stopped_after < 1.0, (status, stopped_after, trainer.log)
