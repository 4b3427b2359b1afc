"""zfeed's trainer side: ``BatchClient`` (plain Python) and ``ZmqDataLayer`` (Caffe).

Caffe finds the layer as ``python_param { module: "client_layer" layer: "ZmqDataLayer" }``.
``ZmqDataLayer`` is imported on first use, so ``BatchClient`` and the wire
format work where Caffe is not installed (the data server imports ``wire``).
Runs on Python 3.8 to 3.13 with numpy, pyzmq and msgpack only.
"""

from client_layer.receiver import BatchClient, NoDataError
from client_layer.batch import Batch
from client_layer.wire import WireError

__all__ = ["Batch", "BatchClient", "NoDataError", "WireError", "ZmqDataLayer"]


def __getattr__(name):
    if name == "ZmqDataLayer":
        from client_layer.caffe_layer import ZmqDataLayer

        return ZmqDataLayer
    raise AttributeError("module 'client_layer' has no attribute %r" % name)
