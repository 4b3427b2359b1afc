"""``--state-dir`` on a full disk: the server logs it once and serves on; nothing is left behind.

The disk is a 16 KiB tmpfs mounted for the test (root needed) and filled with a file."""

import json
import logging
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from client_layer import BatchClient
from harness.children import ServerProcess, free_port
from harness.datasets import random_images, write_npz
from server.plan import Shard
from server.resume_state import STATE_FILE, ResumeState

pytestmark = pytest.mark.integration

FILLER = "filler"


def fill(folder):
    """Write ``folder/FILLER`` until the file system has no byte left."""
    with open(folder / FILLER, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def state_for(folder):
    config = SimpleNamespace(state_dir=str(folder), source="npz:x", seed=0, batch_size=4, shuffle=True,
                             epochs=None, phase="train", shard=Shard())
    return ResumeState.for_config(config, dataset_size=12)


def test_save_on_a_full_disk_logs_once_leaves_no_file_and_saves_again_with_room(small_disk, caplog):
    state = state_for(small_disk)
    fill(small_disk)
    with caplog.at_level(logging.WARNING, logger="zfeed.server"):
        for seq in range(1, 4):
            state.save(seq, seq * 4, force=True)
    assert sorted(os.listdir(small_disk)) == [FILLER]  # no zfeed-state.json.tmp
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(small_disk / STATE_FILE) in warnings[0], warnings
    (small_disk / FILLER).unlink()
    state.save(4, 16, force=True)
    assert json.loads((small_disk / STATE_FILE).read_text())["seq"] == 4
    assert sorted(os.listdir(small_disk)) == [STATE_FILE]


@pytest.mark.parametrize("when", ["at start", "while serving"])
def test_server_serves_on_when_its_state_dir_is_full(tmp_path, small_disk, when):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(12), range(12))
    if when == "at start":
        fill(small_disk)
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4",
            "--workers", "1", "--state-dir", str(small_disk)]
    with ServerProcess(args, tmp_path / "server.log") as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            client.receive()
            if when == "while serving":
                fill(small_disk)
            received = [client.receive() for _ in range(30)]  # saves happen every second at most
        assert server.stop() == 0, server.log
    assert all(np.all(np.isfinite(b.array("data"))) for b in received)
    assert server.log.count("cannot save the stream position") == 1, server.log
    assert "Traceback" not in server.log
    assert STATE_FILE + ".tmp" not in os.listdir(small_disk)
