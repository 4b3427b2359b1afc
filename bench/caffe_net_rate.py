"""Time a real caffe.Net whose only work is its data layer (run by the Caffe Python).

    python bench/caffe_net_rate.py NET.prototxt --seconds S --warmup-seconds W

NET is any net text; the benchmark gives one data layer and a Silence layer.
It is built in the TRAIN phase and ``net.forward()`` is called for ``W``
seconds (the producer fills its buffers, caches warm), then timed for ``S``
seconds. Prints one JSON line: images, seconds, images_s and, when the data
layer is zfeed's, wait_share: the share of the timed seconds it waited.
"""

import argparse
import json
import sys
import time

import caffe


def main() -> int:
    parser = argparse.ArgumentParser(prog="caffe_net_rate.py")
    parser.add_argument("net")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    args = parser.parse_args()
    caffe.set_mode_cpu()
    net = caffe.Net(args.net, caffe.TRAIN)
    batch = next(iter(net.blobs.values())).data.shape[0]
    forward = net.forward
    end = time.perf_counter() + args.warmup_seconds
    while time.perf_counter() < end:
        forward()
    client = getattr(net.layers[0], "client", None)  # ZmqDataLayer's BatchClient
    waited = client.wait_s if client else 0.0
    count = 0
    start = time.perf_counter()
    end = start + args.seconds
    while True:
        for _ in range(10):
            forward()
        count += 10
        now = time.perf_counter()
        if now >= end:
            break
    seconds = now - start
    result = {"images": count * batch, "seconds": seconds, "images_s": count * batch / seconds}
    if client:
        result["wait_share"] = (client.wait_s - waited) / seconds
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
