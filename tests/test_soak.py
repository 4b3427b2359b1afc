"""A test-suite-sized soak (bench/soak.py runs the long one): flat memory, exact delivery."""

import pytest

from bench.soak import BATCH, run_soak

pytestmark = pytest.mark.integration


def test_soak_with_worker_kills_and_trainer_restarts(tmp_path):
    report = run_soak(seconds=40, workdir=tmp_path, kill_every=1.5, restart_every=4.0)
    print("\n".join(report.lines()))
    assert report.server_exit == 0
    assert report.worker_kills >= 15 and report.trainer_restarts >= 8
    assert report.complete_epochs >= 2
    assert report.duplicates == 0
    # What ZeroMQ and the kernel held for a trainer that left: far less than 40 batches each time.
    assert report.missing <= report.trainer_restarts * 40 * BATCH
    for role, series in report.rss.items():
        settled = series[len(series) // 4:]  # after start-up
        assert max(settled) < settled[0] * 1.25 + 8 * 1024, (role, series)
