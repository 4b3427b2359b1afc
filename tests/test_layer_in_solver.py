"""ZmqDataLayers in a real Caffe solver's train and test nets (issues 15 and 16.5).

Each test runs real servers (or a raw PUSH peer) and a real solver in the
Caffe Python (tests/caffe_scripts/solver_phases.py), over tcp on 127.0.0.1.
"""

import pytest
import json
from collections import Counter

import numpy as np
import zmq

from caffe_runner import run_caffe_script
from client_layer import wire
from harness.children import ServerProcess, free_port
from harness.datasets import random_images, write_npz

pytestmark = pytest.mark.caffe

NET = """name: "zfeed"
%(layers)s
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 64 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
LAYER = """layer { name: "data" type: "Python" top: "data" top: "label" include { phase: %s }
  python_param { module: "client_layer" layer: "ZmqDataLayer" param_str: '%s' } }"""
SOLVER = """net: "%(net)s"
base_lr: 0.001 lr_policy: "fixed" max_iter: 100000 display: 0 snapshot: 0 solver_mode: CPU
%(test)s
"""
# The solver's own periodic test is never reached: the script tests, as the demo does.
TEST_SOLVER_LINES = "test_iter: 1 test_interval: 100000 test_initialization: false"

SLOW_DATASET = '''
import time
import numpy as np

class Slow:
    """A dataset that takes %(seconds)r s per sample: a test server slower than its test net."""
    def __len__(self):
        return 64
    def __getitem__(self, i):
        time.sleep(%(seconds)r)
        return {"data": np.full((3, 32, 32), i, np.uint8), "label": np.array(i %% 10, np.float32)}

def make():
    return Slow()
'''


def write_solver(tmp_path, train_params, test_params=None):
    layers = [LAYER % ("TRAIN", json.dumps(train_params))]
    if test_params:
        layers.append(LAYER % ("TEST", json.dumps(test_params)))
    net = tmp_path / "net.prototxt"
    net.write_text(NET % {"layers": "\n".join(layers)})
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER % {"net": net, "test": TEST_SOLVER_LINES if test_params else ""})
    return solver


def train(tmp_path, solver, steps, test_every=0, test_iter=0):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"solver": str(solver), "steps": steps, "test_every": test_every,
                                "test_iter": test_iter}))
    result = run_caffe_script("solver_phases", spec, timeout=180)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_wait_share_per_phase_agrees_with_the_demos_count_and_lines_print_once(tmp_path):
    """Issues 15.2 and 15.3: a slow test server, a fast train server, the demo's way of training."""
    train_source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(64, (3, 32, 32), seed=2),
                                        [i % 10 for i in range(64)])
    (tmp_path / "slow.py").write_text(SLOW_DATASET % {"seconds": 0.01})
    train_port, test_port = free_port(), free_port()
    common = ["--batch-size", "16", "--workers", "1"]
    train_params = {"address": "tcp://127.0.0.1:%d" % train_port, "timeout_s": 30, "metrics_port": free_port()}
    test_params = {"address": "tcp://127.0.0.1:%d" % test_port, "timeout_s": 30, "metrics_port": free_port()}
    solver = write_solver(tmp_path, train_params, test_params)
    with ServerProcess(["--source", train_source, "--bind", "tcp://127.0.0.1:%d" % train_port, *common],
                       tmp_path / "train.log") as train_server, \
            ServerProcess(["--source", "python:%s:make" % (tmp_path / "slow.py"), "--phase", "test",
                           "--bind", "tcp://127.0.0.1:%d" % test_port, *common], tmp_path / "test.log") as test_server:
        got, stderr = train(tmp_path, solver, steps=300, test_every=100, test_iter=16)
        train_server.stop()
        test_server.stop()
    phases = got["phases"]
    for phase in ("train", "test"):
        demo_share = phases[phase]["wait_s"] / phases[phase]["seconds"]
        layer_share = phases[phase]["metrics"]["zfeed_layer_wait_share"]
        assert abs(layer_share - demo_share) <= 0.02, (phase, layer_share, demo_share)
    assert phases["test"]["metrics"]["zfeed_layer_wait_share"] > 0.3, phases  # the slow server shows
    # A share over wall time, as the layer used to take it, would have been diluted by training.
    wall_share = phases["test"]["wait_s"] / (phases["train"]["seconds"] + phases["test"]["seconds"])
    assert phases["test"]["metrics"]["zfeed_layer_wait_share"] > wall_share + 0.1, phases
    layer_lines = [line.split(" zfeed-layer ", 1)[1] for line in stderr.splitlines() if " zfeed-layer " in line]
    assert sum("layer metrics on" in line for line in layer_lines) == 2  # one per layer
    assert [line for line, count in Counter(layer_lines).items() if count > 1] == []


def test_binding_trainer_drops_batches_of_other_shapes_and_keeps_training(tmp_path):
    """Issue 16.5: a raw PUSH peer sends good batches, then batches that do not fit, then good ones."""
    port = free_port()
    solver = write_solver(tmp_path, {"bind": "tcp://127.0.0.1:%d" % port, "timeout_s": 30})

    def batch(seq, shape=(8, 3, 16, 16), names=("data", "label")):
        arrays = {"data": np.zeros(shape, np.uint8), "label": np.zeros(shape[0], np.float32)}
        return wire.encode_batch("peer", seq, {n: arrays[n] for n in names}, np.arange(shape[0]),
                                 np.zeros(shape[0]))

    messages = ([batch(seq) for seq in range(3)] + [batch(3, (8, 3, 20, 20)), batch(4, (8, 3, 20, 20)),
                                                    batch(5, (4, 3, 16, 16)), batch(6, names=("data",))]
                + [batch(seq) for seq in range(7, 20)])
    context = zmq.Context()
    peer = context.socket(zmq.PUSH)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.SNDTIMEO, 30000)
    try:
        peer.connect("tcp://127.0.0.1:%d" % port)
        for frames in messages:  # queued until the layer binds, in order
            peer.send_multipart(frames)
        got, stderr = train(tmp_path, solver, steps=12)
    finally:
        peer.close()
        context.term()
    train_phase = got["phases"]["train"]
    assert len(got["losses"]) == 12 and train_phase["forwards"] == 12
    assert train_phase["rejected"] == 4 and train_phase["metrics"]["zfeed_layer_rejected_messages_total"] == 4
    drops = [line for line in stderr.splitlines() if "dropped a message" in line]
    assert len(drops) == 3, stderr  # two batches of one wrong shape are one cause
    assert any("'data' has shape (8, 3, 20, 20), the stream started with (8, 3, 16, 16)" in d for d in drops)
    assert any("a batch without array 'label' (it has data)" in d for d in drops)
