"""The process harness (harness/children.py) keeps its promises: failures carry the command, the
exit status and the log; every wait has a deadline; children die with their parent."""

import re
import signal
import textwrap
import time

import pytest

from harness.children import PYTHON, ChildError, ChildProcess, ServerProcess, alive, free_port
from harness.datasets import random_images, write_npz

pytestmark = pytest.mark.integration

SLEEPER = "import time; time.sleep(60)"
IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def wait_until_gone(pid, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_server_that_refuses_its_configuration_fails_the_readiness_wait_with_its_log(tmp_path):
    with ServerProcess(["--source", "npz:%s" % (tmp_path / "missing.npz"), "--bind", "tcp://127.0.0.1:%d" % free_port()],
                       tmp_path / "server.log") as server:
        with pytest.raises(ChildError) as failed:
            server.wait_ready()
    error = failed.value
    assert error.status == 2
    assert error.command[1:3] == ["-m", "server"] and "--ready-file" in error.command
    assert "missing.npz" in error.log_tail
    assert "before it was ready" in str(error) and error.log_tail in str(error)


def test_a_served_server_is_ready_with_its_endpoints(tmp_path):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(8, (1, 4, 4)), range(8))
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    with ServerProcess(["--source", source, "--bind", endpoint, "--batch-size", "4", "--workers", "1"],
                       tmp_path / "server.log") as server:
        announced = server.wait_ready()
        assert announced["bind"] == [endpoint] and announced["pid"] == server.pid
        assert server.stop() == 0, server.log


def test_a_child_that_overruns_its_wait_is_killed_with_what_it_started(tmp_path):
    script = "import subprocess, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
    with ChildProcess([PYTHON, "-c", script], tmp_path / "child.log") as child:
        child.wait_for_log("\n", timeout_s=10)
        grandchild = int(child.log.split()[0])
        started = time.monotonic()
        with pytest.raises(ChildError, match="did not exit within 1 s: killed"):
            child.wait(1)
        assert time.monotonic() - started < 5
        assert child.process.returncode == -signal.SIGKILL
        assert wait_until_gone(grandchild), "the child's own child outlived it"


def test_stop_escalates_to_sigkill_after_its_deadline_and_says_so(tmp_path):
    with ChildProcess([PYTHON, "-c", IGNORES_SIGTERM], tmp_path / "child.log") as child:
        child.wait_for_log("up", timeout_s=10)
        started = time.monotonic()
        assert child.stop(timeout_s=1) is None  # killed, not exited
        assert 1 <= time.monotonic() - started < 5
        assert child.process.returncode == -signal.SIGKILL


def test_children_die_with_a_parent_that_is_killed_outright(tmp_path):
    """A parent SIGKILLed (no finally runs) still takes its server (SIGTERM: a clean stop) and its
    plain children (SIGKILL) with it."""
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(8, (1, 4, 4)), range(8))
    parent_script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from harness.children import PYTHON, ChildProcess, ServerProcess
        server = ServerProcess(sys.argv[1:], Path(%r))
        server.wait_ready()
        sleeper = ChildProcess([PYTHON, "-c", %r], None)
        print("pids", server.pid, sleeper.pid, flush=True)
        sleeper.process.wait()
        """ % (str(tmp_path / "server.log"), SLEEPER))
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % free_port(), "--workers", "1"]
    with ChildProcess([PYTHON, "-c", parent_script, *args], tmp_path / "parent.log") as parent:
        parent.wait_for_log("pids ", timeout_s=30)
        server_pid, sleeper_pid = map(int, re.search(r"pids (\d+) (\d+)", parent.log).groups())
        parent.process.kill()  # the parent only: its children are in sessions of their own
        parent.process.wait(5)
        assert wait_until_gone(server_pid) and wait_until_gone(sleeper_pid)
    assert "SIGTERM received: stopping" in (tmp_path / "server.log").read_text()
