"""Run several real caffe.Nets in one process and save chosen blobs after every forward pass.

Usage: run_nets.py SPEC.json. SPEC: {"cwd": DIR or null, "nets": [{"net": PATH,
"phase": "train"|"test", "iterations": N, "out": OUT.npz, "blobs": [NAME, ...],
"save_weights": PATH or null, "weights": PATH or null}, ...]}. Each OUT.npz
holds one array per blob, stacked over iterations. The process works in
"cwd" (relative paths in the nets are relative to it, as for the caffe
tool). "save_weights" saves the net's initial weights (a .caffemodel);
"weights" loads them into a net built later, so that two nets compute with
the same weights. A Python exception is printed as "ERROR: <message>" and
exits with status 3.
"""

import json
import os
import sys

import caffe
import numpy as np

with open(sys.argv[1]) as f:
    spec = json.load(f)
if spec.get("cwd"):
    os.chdir(spec["cwd"])
caffe.set_mode_cpu()
try:
    for job in spec["nets"]:
        phase = caffe.TRAIN if job["phase"] == "train" else caffe.TEST
        if job.get("weights"):
            net = caffe.Net(job["net"], phase, weights=job["weights"])
        else:
            net = caffe.Net(job["net"], phase)
        if job.get("save_weights"):
            net.save(job["save_weights"])
        saved = {name: [] for name in job["blobs"]}
        for _ in range(int(job["iterations"])):
            net.forward()
            for name in job["blobs"]:
                saved[name].append(net.blobs[name].data.copy())
        np.savez(job["out"], **{name: np.stack(arrays) for name, arrays in saved.items()})
        del net
except Exception as exc:  # report what the user would see
    print("ERROR: %s: %s" % (type(exc).__name__, exc))
    sys.exit(3)
