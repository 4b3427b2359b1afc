"""What every test file shares: the test categories and the small fixtures the files repeat.

Each test belongs to exactly one category, named by a marker that its file sets with a
module-level ``pytestmark`` (a file with tests of several kinds marks each test instead):

    unit          in-process only: no child process, no Caffe, no network namespace
    integration   real server processes over tcp on 127.0.0.1, network namespaces, fresh venvs
    caffe         real Caffe, run in .venv-caffe as subprocesses (fails, never skips, without it)
    deploy        deploy/ and docker-compose.yml, checked with the tools that read them, and what
                  the images run, run as plain processes
    containers    the images built with Podman and run

``pytest -m unit`` runs the unit tests in seconds; docs/development.md says the rest.
A test with no category, or with two, stops the collection, naming the test.
Under CI (``CI`` set, as ``.ci/run`` runs), a test that skips itself (no root for network
namespaces or tmpfs mounts) fails instead: there every test must run.
"""

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

from harness.children import free_port
from harness.datasets import write_npz

CATEGORIES = ("unit", "integration", "caffe", "deploy", "containers")


def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        categories = sorted({mark.name for mark in item.iter_markers() if mark.name in CATEGORIES})
        if len(categories) != 1:
            wrong.append("%s: %s" % (item.nodeid, ", ".join(categories) or "no category"))
    if wrong:
        raise pytest.UsageError("every test needs exactly one of the markers %s (tests/conftest.py); "
                                "these do not:\n  %s" % (", ".join(CATEGORIES), "\n  ".join(wrong)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI"):
        report.outcome = "failed"
        report.longrepr = "skipped under CI, where every test must run: %s" % (report.longrepr,)


@pytest.fixture
def npz_source(tmp_path: Path) -> Callable[..., str]:
    """``npz_source(images, labels=range(len(images)), name="d.npz")``: write an ``npz:`` data set
    into this test's ``tmp_path`` and return the ``--source`` value that serves it."""
    def write(images: np.ndarray, labels: Optional[Sequence[int]] = None, name: str = "d.npz") -> str:
        labels = range(len(images)) if labels is None else labels
        return "npz:%s" % write_npz(tmp_path / name, images, labels)
    return write


@pytest.fixture
def local_endpoint() -> Callable[[], str]:
    """``local_endpoint()``: a new ``tcp://127.0.0.1:PORT`` on a free port at each call."""
    return lambda: "tcp://127.0.0.1:%d" % free_port()
