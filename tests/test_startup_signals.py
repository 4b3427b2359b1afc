"""SIGTERM and SIGINT during start-up (a slow source being listed) give exit 0 within seconds.

The slow step is a ``python:`` dataset whose factory takes long: in Python code (a sleep), in
one C call that never returns to the interpreter (as listing a large LMDB does), which a Python
signal handler alone cannot interrupt, or in code whose bare ``except`` swallows the handler's
exception (as OpenCV's loader would while the server imports it)."""

import signal
import time

import pytest

from harness.children import ServerProcess, free_port

pytestmark = pytest.mark.integration

STOP_BOUND_S = 5.0
SLOW_STEPS = {
    "python": "time.sleep(60)",
    "c-call": "hashlib.pbkdf2_hmac('sha256', b'x', b'salt', 60_000_000)",  # about 20 s in one C call
    # A bare `except:` (OpenCV's loader has two) swallows the handler's exception; start-up then
    # ends at once. The server used to go on to serve, the signal lost.
    "swallowed": "with contextlib.suppress(BaseException): time.sleep(60)",
}
DATASET = """import contextlib, hashlib, pathlib, time
import numpy as np

class Slow:
    def __init__(self):
        pathlib.Path(%r).touch()
        %s

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"data": np.zeros((1, 2, 2), np.uint8), "label": np.float32(i)}

def make():
    return Slow()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("step", sorted(SLOW_STEPS))
def test_signal_during_start_up_exits_0_within_seconds(tmp_path, step, signum):
    listing = tmp_path / "listing"
    module = tmp_path / "slow_dataset.py"
    module.write_text(DATASET % (str(listing), SLOW_STEPS[step]))
    args = ["--source", "python:%s:make" % module, "--bind", "tcp://127.0.0.1:%d" % free_port()]
    with ServerProcess(args, tmp_path / "server.log") as server:
        deadline = time.monotonic() + 30
        while not listing.exists():
            assert server.process.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.05)
        started = time.monotonic()
        status = server.stop(signum, timeout_s=30)
        took = time.monotonic() - started
    assert status == 0, server.log
    assert took < STOP_BOUND_S, "took %.1f s; log:\n%s" % (took, server.log)
    assert "%s received during start-up: stopping" % signal.Signals(signum).name in server.log
    assert "Traceback" not in server.log and "serving" not in server.log
