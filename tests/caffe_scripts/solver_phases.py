"""Train a real Caffe solver whose nets take data from ZmqDataLayers, as zfeed's demo does.

Usage: solver_phases.py SPEC.json. SPEC: {"solver": PATH, "steps": N,
"test_every": K, "test_iter": I}. Runs N ``solver.step(1)``; with K > 0, after
every K steps (and before the first) a test pass of I forwards of the first
test net. Like the demo, it counts for each phase the seconds spent in its
calls and, within them, the layer client's wait. Prints one JSON object:
{"losses": [...], "phases": {"train"|"test": {"seconds", "wait_s",
"metrics": the layer's /metrics values, "rejected", "forwards"}}}.
"""

import json
import sys
import time

import caffe

spec = json.load(open(sys.argv[1]))
caffe.set_mode_cpu()
solver = caffe.get_solver(spec["solver"])
nets = {"train": solver.net}
if spec.get("test_every"):
    nets["test"] = solver.test_nets[0]


def data_layer(net):
    return net.layers[list(net._layer_names).index("data")]


layers = {phase: data_layer(net) for phase, net in nets.items()}
counted = {phase: {"seconds": 0.0, "wait_s": 0.0} for phase in nets}


def timed(phase, function):
    client = layers[phase].client
    wait_before, started = client.wait_s, time.perf_counter()
    function()
    counted[phase]["seconds"] += time.perf_counter() - started
    counted[phase]["wait_s"] += client.wait_s - wait_before


def test_pass():
    nets["test"].share_with(solver.net)
    for _ in range(spec["test_iter"]):
        nets["test"].forward()


losses = []
for step in range(spec["steps"]):
    if spec.get("test_every") and step % spec["test_every"] == 0:
        timed("test", test_pass)
    timed("train", lambda: solver.step(1))
    losses.append(float(solver.net.blobs["loss"].data))
for phase, layer in layers.items():
    counted[phase].update(metrics=layer._metric_values(), rejected=layer.client.rejected,
                          forwards=layer.forward_count)
print(json.dumps({"losses": losses, "phases": counted}))
