"""``ReadyBatchLayer``: the floor of any Python data layer, one ready batch copied into the tops.

    param_str: {"tops": [{"shape": [64, 1, 28, 28], "dtype": "uint8", "scale": 0.00390625},
                         {"shape": [64], "dtype": "float32"}]}

At setup it makes one batch per top (random values of ``dtype``); every
``forward()`` writes it into the top blob the way zfeed's layer finishes a
batch: uint8 pixels times ``scale`` into float32, float32 copied. No I/O,
no decoding, no transform: what is left is the cost of a Python layer
filling its blobs, the ceiling for zfeed's layer on the same shapes.
"""

import json

import caffe
import numpy as np


class ReadyBatchLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = json.loads(self.param_str)["tops"]
        rng = np.random.default_rng(0)
        self.batches = []
        for i, spec in enumerate(params):
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            values = rng.integers(0, 256, shape).astype(dtype) if dtype == np.uint8 else rng.random(shape, np.float32)
            self.batches.append((values, np.float32(spec.get("scale", 1.0))))
            top[i].reshape(*shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for i, (values, scale) in enumerate(self.batches):
            if values.dtype == np.uint8:
                np.multiply(values, scale, out=top[i].data, dtype=np.float32, casting="unsafe")
            else:
                top[i].data[...] = values

    def backward(self, top, propagate_down, bottom):
        pass
