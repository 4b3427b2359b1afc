"""What the demo trains: its batch sizes, scale, seed and iterations, and the net and solver
written from this folder's templates.

Apart from ``python -m demo`` (``demo/__main__.py``, which starts the
processes), ``deploy/demo_setup.py`` imports it in the demo-dataset image,
which holds ``demo/`` but not ``harness/``: this module starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from demo.dataset import DigitsDataset

DEMO_DIR = Path(__file__).resolve().parent
NET_TEMPLATE = DEMO_DIR / "lenet_digits_train_val.prototxt"
SOLVER_TEMPLATE = DEMO_DIR / "lenet_digits_solver.prototxt"

TRAIN_BATCH = 64
TEST_BATCH = 100
SCALE = 0.00390625  # 1/256, as Caffe's LeNet example
SEED = 0
DEFAULT_ITERATIONS = 300


def _quoted(text: str) -> str:
    # The inside of a prototxt string; JSON escapes are valid prototxt escapes.
    return json.dumps(text)[1:-1]


def write_prototxts(workdir: Path, dataset: DigitsDataset, train_address: str, test_address: str,
                    iterations: int) -> Path:
    """Fill in the templates into ``workdir``; returns the solver's path."""
    if dataset.test_count % TEST_BATCH:
        raise ValueError("%d test images do not fill batches of %d: a test pass would not cover "
                         "each once" % (dataset.test_count, TEST_BATCH))
    net_path = workdir / NET_TEMPLATE.name
    solver_path = workdir / SOLVER_TEMPLATE.name
    # The address is JSON inside a single-quoted prototxt string: neither may hold a quote.
    net_path.write_text(Template(NET_TEMPLATE.read_text()).substitute(
        TRAIN_ADDRESS=train_address, TEST_ADDRESS=test_address, CLASS_COUNT=dataset.class_count))
    solver_path.write_text(Template(SOLVER_TEMPLATE.read_text()).substitute(
        NET=_quoted(str(net_path)), TEST_ITER=dataset.test_count // TEST_BATCH,
        TEST_INTERVAL=max(1, iterations // 3), MAX_ITER=iterations))
    return solver_path
