"""Time a real caffe.Net whose only work is its data layer (run by the Caffe Python).

    python bench/caffe_feed.py {zmq,data,queue} --batches N --warmup W [--address A | --lmdb P]

The net is built in the TRAIN phase from one data layer and a Silence layer:

- ``zmq``: zfeed's ``client_layer.ZmqDataLayer`` connected to ``--address``;
- ``data``: Caffe's own ``Data`` layer over the LMDB, with ``transform_param``;
- ``queue``: ``bench.queue_layer.QueueDataLayer``, the multiprocessing.Queue baseline.

The transform is the same for all three: crop 227 (random), mirror, mean
values 104,117,123, batch 64. Measured: wall time of ``net.forward()`` for
``--batches`` batches after ``--warmup`` batches (enough to drain whatever
the producer buffered while the net was being built). Prints one JSON line:
images, seconds, images_s and, for ``zmq``, wait_share: the share of that
time the layer waited for the server.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import caffe
from caffe_net_rate import print_rate, zfeed_wait_s  # bench/, this script's directory

CROP = 227
MEAN = (104, 117, 123)

DATA_LAYERS = {
    "zmq": """
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "client_layer" layer: "ZmqDataLayer" param_str: %(param_str)s } }""",
    "data": """
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: %(crop)d mirror: true %(mean_values)s }
  data_param { source: %(lmdb)s backend: LMDB batch_size: %(batch_size)d } }""",
    "queue": """
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "bench.queue_layer" layer: "QueueDataLayer" param_str: %(param_str)s } }""",
}

SILENCE = """
layer { name: "silence" type: "Silence" bottom: "data" bottom: "label" }
"""


def net_text(args) -> str:
    if args.mode == "zmq":
        params = {"address": args.address, "timeout_s": 60}
    else:
        params = {"source": args.lmdb, "batch_size": args.batch_size, "crop_size": CROP,
                  "mirror": True, "mean": list(MEAN), "workers": args.queue_workers}
    layer = DATA_LAYERS[args.mode] % {
        # JSON strings are valid prototxt strings.
        "param_str": json.dumps(json.dumps(params)),
        "lmdb": json.dumps(args.lmdb or ""),
        "crop": CROP,
        "batch_size": args.batch_size,
        "mean_values": " ".join("mean_value: %d" % v for v in MEAN),
    }
    return 'name: "feed_%s"%s%s' % (args.mode, layer, SILENCE)


def main() -> int:
    parser = argparse.ArgumentParser(prog="caffe_feed.py")
    parser.add_argument("mode", choices=sorted(DATA_LAYERS))
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--address", help="zmq: the data server's endpoint")
    parser.add_argument("--lmdb", help="data, queue: the LMDB")
    parser.add_argument("--queue-workers", type=int, default=2)
    args = parser.parse_args()

    caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(net_text(args))
    try:
        net = caffe.Net(f.name, caffe.TRAIN)
    finally:
        os.unlink(f.name)
    for _ in range(args.warmup):
        net.forward()
    waited = zfeed_wait_s(net)
    start = time.perf_counter()
    for _ in range(args.batches):
        net.forward()
    print_rate(net, args.batches, time.perf_counter() - start, waited)
    return 0


if __name__ == "__main__":
    sys.exit(main())
