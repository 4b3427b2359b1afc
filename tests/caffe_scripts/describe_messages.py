"""Print, as JSON, the fields of real Caffe's Datum, BlobShape and BlobProto.

Usage: describe_messages.py. Output: {message: [{name, number, label, type,
type_name, default_value, packed}, ...]} in declaration order.
"""

import json

from caffe.proto import caffe_pb2
from google.protobuf import descriptor_pb2


def describe(message_class):
    proto = descriptor_pb2.DescriptorProto()
    message_class.DESCRIPTOR.CopyToProto(proto)
    return [{"name": f.name, "number": f.number, "label": f.label, "type": f.type,
             "type_name": f.type_name, "default_value": f.default_value,
             "packed": f.options.packed} for f in proto.field]


print(json.dumps({name: describe(getattr(caffe_pb2, name))
                  for name in ("Datum", "BlobShape", "BlobProto")}))
