"""Print, as JSON, the fields of real Caffe's messages.

Usage: describe_message_fields.py [MESSAGE ...] (default: Datum BlobShape
BlobProto). Output: {message: {"fields": [{name, number, label, type,
type_name, default_value, packed}, ...] in declaration order, "enums":
{enum: [[name, number], ...]}}}, plus "Phase" for the file-level enum.
"""

import json
import sys

from caffe.proto import caffe_pb2
from google.protobuf import descriptor_pb2


def describe(message_class):
    proto = descriptor_pb2.DescriptorProto()
    message_class.DESCRIPTOR.CopyToProto(proto)
    return {"fields": [{"name": f.name, "number": f.number, "label": f.label, "type": f.type,
                        "type_name": f.type_name, "default_value": f.default_value,
                        "packed": f.options.packed} for f in proto.field],
            "enums": {e.name: [[v.name, v.number] for v in e.value] for e in proto.enum_type}}


names = sys.argv[1:] or ["Datum", "BlobShape", "BlobProto"]
result = {name: describe(getattr(caffe_pb2, name)) for name in names}
result["Phase"] = [[v.name, v.number] for v in caffe_pb2.DESCRIPTOR.enum_types_by_name["Phase"].values]
print(json.dumps(result))
