"""Run a real caffe.Net and save chosen blobs after every forward pass.

Usage: run_net.py NET.prototxt train|test ITERATIONS OUT.npz BLOB [BLOB ...]
Saves OUT.npz with one array per blob, stacked over iterations (shape
ITERATIONS x blob shape). A Python exception raised while building the net
or running it is printed as "ERROR: <message>" and exits with status 3.
"""

import sys

import caffe
import numpy as np

net_path, phase, iterations, out_path = sys.argv[1:5]
blob_names = sys.argv[5:]
caffe.set_mode_cpu()
try:
    net = caffe.Net(net_path, caffe.TRAIN if phase == "train" else caffe.TEST)
    saved = {name: [] for name in blob_names}
    for _ in range(int(iterations)):
        net.forward()
        for name in blob_names:
            saved[name].append(net.blobs[name].data.copy())
except Exception as exc:  # report what the user would see
    print("ERROR: %s: %s" % (type(exc).__name__, exc))
    sys.exit(3)
np.savez(out_path, **{name: np.stack(arrays) for name, arrays in saved.items()})
