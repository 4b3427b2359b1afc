"""Write messages with real Caffe for zfeed's readers to parse.

Usage: write_caffe_protos.py OUT_DIR. Writes, from the array
A = arange(2*3*4).reshape(2, 3, 4) (values below):
  mean_shape_dim.binaryproto  caffe.io.array_to_blobproto(A / 8 with a leading 1 axis)
  mean_legacy.binaryproto     num=1, channels, height, width, data = A / 8
  datum_raw.bin               caffe.io.array_to_datum(A as uint8, label=7)
"""

import os
import sys

import numpy as np
from caffe.io import array_to_blobproto, array_to_datum
from caffe.proto import caffe_pb2

out_dir = sys.argv[1]
image = np.arange(2 * 3 * 4).reshape(2, 3, 4)
mean = image / 8.0

blobs = {"mean_shape_dim.binaryproto": array_to_blobproto(mean[np.newaxis]),
         "mean_legacy.binaryproto": caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4,
                                                        data=mean.ravel().tolist())}
messages = dict(blobs, **{"datum_raw.bin": array_to_datum(image.astype(np.uint8), label=7)})
for name, message in messages.items():
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(message.SerializeToString())
