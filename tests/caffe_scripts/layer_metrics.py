"""Run a net whose ZmqDataLayer serves metrics, then print what its endpoint says.

Usage: layer_metrics.py NET.prototxt ITERATIONS METRICS_PORT
"""

import sys
import urllib.request

import caffe

net_path, iterations, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
caffe.set_mode_cpu()
net = caffe.Net(net_path, caffe.TEST)
for _ in range(iterations):
    net.forward()
print(urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode())
