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


def zfeed_wait_s(net) -> float:
    """Seconds zfeed's layer (the net's first) has waited so far; 0 for any other data layer."""
    client = getattr(net.layers[0], "client", None)  # ZmqDataLayer's BatchClient
    return client.wait_s if client else 0.0


def print_rate(net, forwards: int, seconds: float, waited_before: float) -> None:
    """The JSON line: ``forwards`` batches in ``seconds``, and zfeed's wait share then."""
    images = forwards * next(iter(net.blobs.values())).data.shape[0]
    result = {"images": images, "seconds": seconds, "images_s": images / seconds}
    if getattr(net.layers[0], "client", None):
        result["wait_share"] = (zfeed_wait_s(net) - waited_before) / seconds
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(prog="caffe_net_rate.py")
    parser.add_argument("net")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    args = parser.parse_args()
    caffe.set_mode_cpu()
    net = caffe.Net(args.net, caffe.TRAIN)
    forward = net.forward
    end = time.perf_counter() + args.warmup_seconds
    while time.perf_counter() < end:
        forward()
    waited = zfeed_wait_s(net)
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
    print_rate(net, count, now - start, waited)
    return 0


if __name__ == "__main__":
    sys.exit(main())
