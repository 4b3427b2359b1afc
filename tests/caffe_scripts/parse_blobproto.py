"""Parse a .binaryproto with real Caffe and report it.

Usage: parse_blobproto.py BLOBPROTO OUT_NPY. Prints JSON with the set
fields, num/channels/height/width and shape.dim; saves
caffe.io.blobproto_to_array(blob) (float64) to OUT_NPY.
"""

import json
import sys

import numpy as np
from caffe.io import blobproto_to_array
from caffe.proto import caffe_pb2

blob_path, out_path = sys.argv[1:]
with open(blob_path, "rb") as f:
    blob = caffe_pb2.BlobProto.FromString(f.read())
np.save(out_path, blobproto_to_array(blob))
print(json.dumps({"set_fields": sorted(field.name for field, _ in blob.ListFields()),
                  "num": blob.num, "channels": blob.channels, "height": blob.height,
                  "width": blob.width, "shape_dim": list(blob.shape.dim)}))
