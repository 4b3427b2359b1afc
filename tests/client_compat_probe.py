"""Receive batches with client_layer under another Python and save what it decoded.

Usage: client_compat_probe.py ADDRESS COUNT OUT.npz [TIMEOUT_S], with the
repository on PYTHONPATH (``harness.children.child_env()``). Runs on any
Python client_layer supports (3.8 to 3.13) with numpy, pyzmq and msgpack
only; saves data, label, indices and epochs of COUNT batches.
"""

import sys

import numpy as np

from client_layer import BatchClient

address, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
timeout_s = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
with BatchClient(address, timeout_s=timeout_s) as client:
    batches = [client.receive() for _ in range(count)]
    np.savez(out, data=np.stack([b.array("data") for b in batches]),
             label=np.stack([b.array("label") for b in batches]),
             indices=np.stack([b.indices for b in batches]), epochs=np.stack([b.epochs for b in batches]),
             version=np.array(sys.version_info[:2]))
