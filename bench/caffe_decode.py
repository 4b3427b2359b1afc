"""Decode an encoded-Datum LMDB with Caffe's own Data layer (run by the Caffe Python).

    python bench/caffe_decode.py LMDB OUT.npy --count N

Caffe's wheel decodes JPEG with IJG libjpeg 9d: this is the reference that
issue 3's parity bound is stated against. The net is one TEST-phase ``Data``
layer without any transform (so its ``data`` blob holds the decoded BGR
pixels as floats, in key order) and a Silence layer. The first ``N`` images
are written as a uint8 N x C x H x W array. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile

import caffe
import numpy as np

BATCH = 64

NET = """name: "caffe_decode"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: %s backend: LMDB batch_size: %d } }
layer { name: "silence" type: "Silence" bottom: "data" bottom: "label" }
"""


def main() -> int:
    parser = argparse.ArgumentParser(prog="caffe_decode.py")
    parser.add_argument("lmdb")
    parser.add_argument("out")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(NET % (json.dumps(args.lmdb), BATCH))
    try:
        net = caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)
    images = []
    while len(images) * BATCH < args.count:
        net.forward()
        images.append(net.blobs["data"].data.copy())
    pixels = np.concatenate(images)[:args.count]
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit("Caffe's blob does not hold 8-bit pixels")
    np.save(args.out, pixels.astype(np.uint8))
    print(json.dumps({"images": int(pixels.shape[0]), "shape": list(pixels.shape[1:])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
