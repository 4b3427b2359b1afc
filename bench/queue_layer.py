"""The baseline: the multiprocessing.Queue data layer a Caffe user writes today.

    layer { name: "data" type: "Python" top: "data" top: "label"
      python_param { module: "bench.queue_layer" layer: "QueueDataLayer"
        param_str: '{"source": "train_lmdb", "batch_size": 64, "crop_size": 227,
                     "mirror": true, "mean": [104, 117, 123], "workers": 2}' } }

``setup()`` starts ``workers`` loader processes. Each reads its share of the
LMDB's records in a new random order every epoch, decodes the JPEG with
OpenCV, crops at random, mirrors on a coin toss, subtracts the mean and puts
``(CHW float32 array, label)`` on one ``multiprocessing.Queue``, which
pickles every sample. ``forward()`` takes ``batch_size`` samples off the
queue and writes them into the top blobs. It is written the way such
layers usually are, with no tuning for this benchmark; it needs the ``lmdb``
package in the Caffe Python.
"""

import json
import multiprocessing

import caffe
import cv2
import lmdb
import numpy as np
from caffe.proto import caffe_pb2

QUEUE_BATCHES = 4  # samples queued ahead: this many batches


def load_samples(queue, source, worker, workers, crop, mirror, mean, seed):
    """Loader process: put transformed samples of records ``worker::workers`` on ``queue`` forever."""
    cv2.setNumThreads(1)
    rng = np.random.RandomState(seed + worker)
    env = lmdb.open(source, readonly=True, lock=False)
    with env.begin() as txn:
        keys = [key for key, _ in txn.cursor()][worker::workers]
        datum = caffe_pb2.Datum()
        while True:
            for i in rng.permutation(len(keys)):
                datum.ParseFromString(txn.get(keys[i]))
                image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
                height, width = image.shape[:2]
                top = rng.randint(height - crop + 1)
                left = rng.randint(width - crop + 1)
                image = image[top:top + crop, left:left + crop]
                if mirror and rng.randint(2):
                    image = image[:, ::-1]
                image = image.astype(np.float32) - mean
                queue.put((image.transpose(2, 0, 1), datum.label))


class QueueDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = json.loads(self.param_str)
        self.batch_size = params["batch_size"]
        crop = params["crop_size"]
        mean = np.array(params["mean"], dtype=np.float32)
        self.queue = multiprocessing.Queue(maxsize=QUEUE_BATCHES * self.batch_size)
        workers = params.get("workers", 2)
        self.loaders = []
        for worker in range(workers):
            loader = multiprocessing.Process(
                target=load_samples,
                args=(self.queue, params["source"], worker, workers, crop,
                      params.get("mirror", False), mean, params.get("seed", 0)))
            loader.daemon = True
            loader.start()
            self.loaders.append(loader)
        top[0].reshape(self.batch_size, 3, crop, crop)
        top[1].reshape(self.batch_size)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for i in range(self.batch_size):
            image, label = self.queue.get()
            top[0].data[i, ...] = image
            top[1].data[i] = label

    def backward(self, top, propagate_down, bottom):
        pass
