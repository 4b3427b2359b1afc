"""Parse serialised Datums with real Caffe's caffe_pb2 and print them as JSON.

Usage: parse_datums.py FILE... (each file holds one serialised Datum).
Output: a list, one object per file, with the fields that are set
("set_fields") and every field's value; ``data`` is hex.
"""

import json
import sys

from caffe.proto import caffe_pb2


def describe(path):
    with open(path, "rb") as f:
        datum = caffe_pb2.Datum.FromString(f.read())
    return {"set_fields": sorted(field.name for field, _ in datum.ListFields()),
            "channels": datum.channels, "height": datum.height, "width": datum.width,
            "label": datum.label, "encoded": datum.encoded, "data": datum.data.hex(),
            "float_data": list(datum.float_data)}


print(json.dumps([describe(path) for path in sys.argv[1:]]))
