"""A test-suite-sized soak (bench/soak.py runs the long one): flat memory, exact delivery."""

import pytest

from bench.soak import BATCH, SAMPLE_BYTES, run_soak
from client_layer.receiver import DEFAULT_PREFETCH, RECEIVE_BUFFER_BYTES
from server.options import DEFAULT_MAX_BATCHES_PER_MESSAGE
from server.sender import QUEUED_PER_TRAINER, SEND_BUFFER_BYTES

pytestmark = pytest.mark.integration


def test_soak_with_worker_kills_and_trainer_restarts(tmp_path):
    report = run_soak(seconds=40, workdir=tmp_path, kill_every=1.5, restart_every=4.0)
    print("\n".join(report.lines()))
    assert report.server_exit == 0
    assert report.worker_kills >= 15 and report.trainer_restarts >= 8
    assert report.complete_epochs >= 2
    assert report.duplicates == 0
    # What ZeroMQ and the kernel held for a trainer that left, at most each time (docs/caffe-tool.md):
    # prefetch + 4 messages of up to DEFAULT_MAX_BATCHES_PER_MESSAGE batches, and the socket buffers.
    messages = (DEFAULT_PREFETCH + QUEUED_PER_TRAINER + 2) * DEFAULT_MAX_BATCHES_PER_MESSAGE * BATCH
    kernel = 2 * (RECEIVE_BUFFER_BYTES + SEND_BUFFER_BYTES) // SAMPLE_BYTES
    assert report.missing <= report.trainer_restarts * (messages + kernel)
    for role, series in report.rss.items():
        settled = series[len(series) // 4:]  # after start-up
        assert max(settled) < settled[0] * 1.25 + 8 * 1024, (role, series)
