"""Train with real Caffe solvers for a few iterations and report their losses.

Usage: run_solver.py SPEC.json. SPEC: {"cwd": DIR, "solvers": [{"solver":
PATH, "iterations": N, "out": OUT.json}, ...]}. Works in DIR (where the
solvers' and nets' relative paths point, as for the caffe tool), runs N
solver steps of each solver, one at a time, then one forward pass of its
first test net with the trained weights, and writes OUT.json:
{"train_loss": [loss after each step], "test": {output blob: first value},
"data_shape": shape of the train net's "data" blob}.
"""

import json
import os
import sys

import caffe

with open(sys.argv[1]) as f:
    spec = json.load(f)
os.chdir(spec["cwd"])
caffe.set_mode_cpu()
for job in spec["solvers"]:
    solver = caffe.get_solver(job["solver"])
    losses = []
    for _ in range(int(job["iterations"])):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    test_net = solver.test_nets[0]
    test_net.share_with(solver.net)
    outputs = test_net.forward()
    with open(job["out"], "w") as f:
        json.dump({"train_loss": losses,
                   "test": {name: float(value.ravel()[0]) for name, value in outputs.items()},
                   "data_shape": list(solver.net.blobs["data"].data.shape)}, f)
    del solver, test_net
