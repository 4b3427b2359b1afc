"""``RawRowsLayer``: raw pyzmq rows into Caffe's blobs, the ceiling for zfeed (``bench/raw_rows.py``).

    param_str: {"address": "tcp://127.0.0.1:PORT", "shape": [64, 3, 32, 32]}

Pulls messages of two frames (float32 rows of ``shape[1:]``, float32
labels), any whole number of batches of ``shape[0]`` rows each, and copies
one batch into the tops per ``forward()``. A receive waits at most
``TIMEOUT_MS``.
"""

import json

import caffe
import numpy as np
import zmq

TIMEOUT_MS = 60_000


class RawRowsLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = json.loads(self.param_str)
        self.shape = tuple(params["shape"])
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, 4)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        self.socket.connect(params["address"])
        self.data = self.label = None
        self.next_row = 0
        top[0].reshape(*self.shape)
        top[1].reshape(self.shape[0])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.data is None or self.next_row >= len(self.data):
            frames = self.socket.recv_multipart(copy=False)
            self.data = np.frombuffer(frames[0].buffer, np.float32).reshape((-1,) + self.shape[1:])
            self.label = np.frombuffer(frames[1].buffer, np.float32)
            self.next_row = 0
        rows = slice(self.next_row, self.next_row + self.shape[0])
        top[0].data[...] = self.data[rows]
        top[1].data[...] = self.label[rows]
        self.next_row += self.shape[0]

    def backward(self, top, propagate_down, bottom):
        pass
