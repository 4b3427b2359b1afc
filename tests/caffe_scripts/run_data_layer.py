"""Run a real caffe.Net (TEST phase) whose only layer is a Data layer over an LMDB.

Usage: run_data_layer.py LMDB BATCH_SIZE OUT_DIR [MEAN_FILE]. Runs one
forward pass and saves the "data" and "label" blobs to OUT_DIR/data.npy and
OUT_DIR/label.npy. With MEAN_FILE the layer subtracts that mean
(transform_param.mean_file).
"""

import json
import os
import sys

import caffe
import numpy as np

NET = """name: "zfeed_data_layer_check"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  data_param { source: %(source)s backend: LMDB batch_size: %(batch_size)d }
  %(transform)s
}
"""

lmdb_path, batch_size, out_dir = sys.argv[1:4]
mean_file = sys.argv[4] if len(sys.argv) > 4 else None
# JSON string escapes are valid prototxt string escapes.
transform = "transform_param { mean_file: %s }" % json.dumps(mean_file) if mean_file else ""
net_path = os.path.join(out_dir, "data_layer.prototxt")
with open(net_path, "w") as f:
    f.write(NET % {"source": json.dumps(lmdb_path), "batch_size": int(batch_size),
                   "transform": transform})

caffe.set_mode_cpu()
net = caffe.Net(net_path, caffe.TEST)
net.forward()
np.save(os.path.join(out_dir, "data.npy"), net.blobs["data"].data)
np.save(os.path.join(out_dir, "label.npy"), net.blobs["label"].data)
