"""client_layer on the oldest and newest Pythons it supports, against a real server.

The interpreters come from $ZFEED_CLIENT_PYTHONS (colon-separated; ./dev sets
it to .venv-client3.8 and .venv-client3.13, which hold only numpy, pyzmq and
msgpack). A missing one fails the test: support that is not checked is not
support.
"""

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from harness.children import REPO, ServerProcess, child_env
from harness.datasets import random_images, smooth_images

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DEFAULT = [str(REPO / ".venv-client3.8" / "bin" / "python"), str(REPO / ".venv-client3.13" / "bin" / "python")]
PYTHONS = [p for p in os.environ.get("ZFEED_CLIENT_PYTHONS", "").split(":") if p] or DEFAULT


@pytest.mark.parametrize("python", PYTHONS, ids=[Path(p).parent.parent.name for p in PYTHONS])
@pytest.mark.parametrize("wire_format", ["auto", "float32"])
def test_client_layer_receives_exact_batches(tmp_path, npz_source, local_endpoint, python, wire_format):
    if not os.path.isfile(python):
        pytest.fail("no Python at %s: run ./dev setup" % python, pytrace=False)
    images = random_images(20, (3, 10, 10), seed=4)
    endpoint = local_endpoint()
    args = ["--source", npz_source(images), "--bind", endpoint, "--phase", "test", "--batch-size", "5",
            "--mean-value", "10,20,30", "--scale", "0.5", "--wire-format", wire_format]
    with ServerProcess(args, tmp_path / "server.log") as server:
        out = tmp_path / "got.npz"
        result = subprocess.run([python, str(HERE / "client_compat_probe.py"), endpoint, "4",
                                 str(out)], env=child_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        server.stop()
    got = np.load(out)
    expected = (images.astype(np.float32) - np.array([10, 20, 30], np.float32).reshape(3, 1, 1)) * np.float32(0.5)
    assert np.array_equal(got["data"].reshape(20, 3, 10, 10), expected)
    assert got["label"].ravel().tolist() == list(range(20))
    assert tuple(got["version"]) in ((3, 8), (3, 13))


@pytest.mark.parametrize("python", PYTHONS, ids=[Path(p).parent.parent.name for p in PYTHONS])
def test_compressed_stream_without_the_codec_package_is_one_setup_error_at_once(tmp_path, npz_source,
                                                                                  local_endpoint, python):
    """Not one warning per batch until the timeout, but one error and an exit within 5 s."""
    if not os.path.isfile(python):
        pytest.fail("no Python at %s: run ./dev setup" % python, pytrace=False)
    assert subprocess.run([python, "-c", "import zstandard"], capture_output=True, timeout=30).returncode != 0
    endpoint = local_endpoint()
    args = ["--source", npz_source(smooth_images(20)), "--bind", endpoint, "--batch-size", "5", "--compress", "zstd"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        started = time.monotonic()
        result = subprocess.run([python, str(HERE / "client_compat_probe.py"), endpoint, "1",
                                 str(tmp_path / "got.npz"), "30"], env=child_env(), capture_output=True,
                                text=True, timeout=60)
        elapsed = time.monotonic() - started
        server.stop()
    assert result.returncode != 0 and elapsed < 5.0, (elapsed, result.stderr)
    assert result.stderr.count("StreamSetupError: the data server (connected to %s) compresses "
                               "its batches: zstd compression needs the 'zstandard' package" % endpoint) == 1
    assert "pip install zstandard" in result.stderr
    assert "dropped" not in result.stderr
