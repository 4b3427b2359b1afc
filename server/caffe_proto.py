"""Caffe's messages that zfeed reads and writes, without Caffe.

The messages are declared here field for field as in BVLC
``src/caffe/proto/caffe.proto`` (package ``caffe``, proto2: same numbers,
types, labels, defaults and packing), so their bytes are exactly what Caffe
reads and writes (Datums in an LMDB, means in a ``.binaryproto``) and their
text is exactly what Caffe's prototxt parser accepts:

- ``Datum``, ``BlobShape``, ``BlobProto``: the data and mean files.
- ``LayerParameter`` restricted to what a data layer carries (its generic
  fields, ``transform_param``, ``data_param``, ``image_data_param``,
  ``hdf5_data_param``, ``python_param``), with ``NetState``,
  ``NetStateRule`` and ``ParamSpec``: what ``server.prototxt`` parses.

Why declare a subset rather than ship Caffe's whole ``caffe.proto``: zfeed
reads only data layers, and real prototxts often come from Caffe forks
(SSD, Faster R-CNN, NVCaffe...) whose other layers have parameters no single
``caffe.proto`` knows. ``server.prototxt`` therefore only finds the layer
blocks and parses data layers, strictly, with these messages; the rest of a
net is never interpreted. A test compares every declared field with real
Caffe's ``caffe_pb2`` (tests/test_prototxt_caffe.py), so the declarations
cannot drift from what Caffe reads.

The descriptors live in a private descriptor pool, never the default one, so
importing this module next to a real ``caffe_pb2`` cannot clash.
"""

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_INT32, _UINT32, _INT64 = _F.TYPE_INT32, _F.TYPE_UINT32, _F.TYPE_INT64
_FLOAT, _DOUBLE, _BOOL = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_BOOL
_STRING, _BYTES, _MESSAGE, _ENUM = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE, _F.TYPE_ENUM


def _field(name, number, ftype, label=_OPT, *, default=None, packed=False, type_name=None):
    field = _F(name=name, number=number, type=ftype, label=label)
    if default is not None:
        field.default_value = default
    if packed:
        field.options.packed = True
    if type_name is not None:
        field.type_name = type_name
    return field


def _enum(name, values):
    return descriptor_pb2.EnumDescriptorProto(
        name=name, value=[descriptor_pb2.EnumValueDescriptorProto(name=n, number=v) for n, v in values])


def _message(proto, name, fields, enums=()):
    proto.message_type.add(name=name, field=fields, enum_type=list(enums))


def _source_fields(batch_size_default):
    """The fields that Caffe's DataParameter and ImageDataParameter both start with, alike."""
    return [
        _field("source", 1, _STRING),
        _field("batch_size", 4, _UINT32, default=batch_size_default),
        _field("rand_skip", 7, _UINT32, default="0"),
    ]


def _legacy_transform_fields():
    """The deprecated transform fields that both parameters declare with the same numbers."""
    return [
        _field("scale", 2, _FLOAT, default="1"),
        _field("mean_file", 3, _STRING),
        _field("crop_size", 5, _UINT32, default="0"),
        _field("mirror", 6, _BOOL, default="false"),
    ]


def _file_descriptor_proto():
    proto = descriptor_pb2.FileDescriptorProto(
        name="zfeed/caffe_subset.proto", package="caffe", syntax="proto2")
    proto.enum_type.append(_enum("Phase", [("TRAIN", 0), ("TEST", 1)]))
    _message(proto, "BlobShape", [
        _field("dim", 1, _INT64, _REP, packed=True),
    ])
    _message(proto, "BlobProto", [
        _field("shape", 7, _MESSAGE, type_name=".caffe.BlobShape"),
        _field("data", 5, _FLOAT, _REP, packed=True),
        _field("diff", 6, _FLOAT, _REP, packed=True),
        _field("double_data", 8, _DOUBLE, _REP, packed=True),
        _field("double_diff", 9, _DOUBLE, _REP, packed=True),
        _field("num", 1, _INT32, default="0"),
        _field("channels", 2, _INT32, default="0"),
        _field("height", 3, _INT32, default="0"),
        _field("width", 4, _INT32, default="0"),
    ])
    _message(proto, "Datum", [
        _field("channels", 1, _INT32),
        _field("height", 2, _INT32),
        _field("width", 3, _INT32),
        _field("data", 4, _BYTES),
        _field("label", 5, _INT32),
        _field("float_data", 6, _FLOAT, _REP),
        _field("encoded", 7, _BOOL, default="false"),
    ])
    _message(proto, "NetState", [
        _field("phase", 1, _ENUM, default="TEST", type_name=".caffe.Phase"),
        _field("level", 2, _INT32, default="0"),
        _field("stage", 3, _STRING, _REP),
    ])
    _message(proto, "NetStateRule", [
        _field("phase", 1, _ENUM, type_name=".caffe.Phase"),
        _field("min_level", 2, _INT32),
        _field("max_level", 3, _INT32),
        _field("stage", 4, _STRING, _REP),
        _field("not_stage", 5, _STRING, _REP),
    ])
    _message(proto, "ParamSpec", [
        _field("name", 1, _STRING),
        _field("share_mode", 2, _ENUM, type_name=".caffe.ParamSpec.DimCheckMode"),
        _field("lr_mult", 3, _FLOAT, default="1"),
        _field("decay_mult", 4, _FLOAT, default="1"),
    ], [_enum("DimCheckMode", [("STRICT", 0), ("PERMISSIVE", 1)])])
    _message(proto, "TransformationParameter", [
        _field("scale", 1, _FLOAT, default="1"),
        _field("mirror", 2, _BOOL, default="false"),
        _field("crop_size", 3, _UINT32, default="0"),
        _field("mean_file", 4, _STRING),
        _field("mean_value", 5, _FLOAT, _REP),
        _field("force_color", 6, _BOOL, default="false"),
        _field("force_gray", 7, _BOOL, default="false"),
    ])
    _message(proto, "DataParameter", [
        *_source_fields(batch_size_default=None),
        _field("backend", 8, _ENUM, default="LEVELDB", type_name=".caffe.DataParameter.DB"),
        *_legacy_transform_fields(),
        _field("force_encoded_color", 9, _BOOL, default="false"),
        _field("prefetch", 10, _UINT32, default="4"),
    ], [_enum("DB", [("LEVELDB", 0), ("LMDB", 1)])])
    _message(proto, "ImageDataParameter", [
        *_source_fields(batch_size_default="1"),
        _field("shuffle", 8, _BOOL, default="false"),
        _field("new_height", 9, _UINT32, default="0"),
        _field("new_width", 10, _UINT32, default="0"),
        _field("is_color", 11, _BOOL, default="true"),
        *_legacy_transform_fields(),
        _field("root_folder", 12, _STRING, default=""),
    ])
    _message(proto, "HDF5DataParameter", [
        _field("source", 1, _STRING),
        _field("batch_size", 2, _UINT32),
        _field("shuffle", 3, _BOOL, default="false"),
    ])
    _message(proto, "PythonParameter", [
        _field("module", 1, _STRING),
        _field("layer", 2, _STRING),
        _field("param_str", 3, _STRING, default=""),
        _field("share_in_parallel", 4, _BOOL, default="false"),
    ])
    # Only the fields a data layer carries: any other *_param in a data layer is refused.
    _message(proto, "LayerParameter", [
        _field("name", 1, _STRING),
        _field("type", 2, _STRING),
        _field("bottom", 3, _STRING, _REP),
        _field("top", 4, _STRING, _REP),
        _field("phase", 10, _ENUM, type_name=".caffe.Phase"),
        _field("loss_weight", 5, _FLOAT, _REP),
        _field("param", 6, _MESSAGE, _REP, type_name=".caffe.ParamSpec"),
        _field("blobs", 7, _MESSAGE, _REP, type_name=".caffe.BlobProto"),
        _field("propagate_down", 11, _BOOL, _REP),
        _field("include", 8, _MESSAGE, _REP, type_name=".caffe.NetStateRule"),
        _field("exclude", 9, _MESSAGE, _REP, type_name=".caffe.NetStateRule"),
        _field("transform_param", 100, _MESSAGE, type_name=".caffe.TransformationParameter"),
        _field("data_param", 107, _MESSAGE, type_name=".caffe.DataParameter"),
        _field("hdf5_data_param", 112, _MESSAGE, type_name=".caffe.HDF5DataParameter"),
        _field("image_data_param", 115, _MESSAGE, type_name=".caffe.ImageDataParameter"),
        _field("python_param", 130, _MESSAGE, type_name=".caffe.PythonParameter"),
    ])
    return proto


def _message_class(descriptor):
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(_file_descriptor_proto().SerializeToString())
_FILE = _POOL.FindFileByName("zfeed/caffe_subset.proto")

BlobShape = _message_class(_FILE.message_types_by_name["BlobShape"])
BlobProto = _message_class(_FILE.message_types_by_name["BlobProto"])
Datum = _message_class(_FILE.message_types_by_name["Datum"])
NetState = _message_class(_FILE.message_types_by_name["NetState"])
NetStateRule = _message_class(_FILE.message_types_by_name["NetStateRule"])
LayerParameter = _message_class(_FILE.message_types_by_name["LayerParameter"])

# Names of every message declared here, for the field-for-field test against real Caffe.
MESSAGE_NAMES = tuple(_FILE.message_types_by_name)
# Messages declared with only some of Caffe's fields (all others are complete).
PARTIAL_MESSAGES = ("LayerParameter",)


def message_class(name):
    """The class of message ``caffe.<name>`` declared here."""
    return _message_class(_FILE.message_types_by_name[name])


def image_to_datum(image_chw, label):
    """A raw Datum of a uint8 (C, H, W) image, as Caffe's ``CVMatToDatum``.

    ``data`` holds the C-order CHW bytes (BGR channel order is the caller's
    business); ``encoded`` stays false. Raises ValueError for any other
    dtype or rank.
    """
    image = np.asarray(image_chw)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"image_to_datum needs a uint8 (C, H, W) array, "
                         f"got {image.dtype} of shape {image.shape}")
    channels, height, width = image.shape
    return Datum(channels=channels, height=height, width=width,
                 data=np.ascontiguousarray(image).tobytes(), label=int(label))


def encoded_datum(encoded_bytes, label):
    """An encoded Datum: ``data`` is an image file's bytes, ``encoded`` true.

    channels/height/width stay unset (0), as Caffe leaves them for encoded
    Datums; readers learn the size by decoding.
    """
    return Datum(data=bytes(encoded_bytes), label=int(label), encoded=True)


def read_mean_binaryproto(path):
    """The mean image stored in a Caffe ``.binaryproto``: float32 (C, H, W).

    Accepts the legacy num/channels/height/width shape (what
    compute_image_mean writes) and ``shape.dim`` with 3 dims or 4 dims led
    by 1 (what pycaffe's ``array_to_blobproto`` writes); values come from
    ``double_data`` when present, else ``data``, as in Caffe's
    ``Blob::FromProto``. Raises ValueError naming ``path`` when the file is
    not a BlobProto, num is not 1, or the value count does not match the
    shape; OSError when it cannot be read.
    """
    with open(path, "rb") as f:
        raw = f.read()
    blob = BlobProto()
    try:
        blob.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError differs between backends
        raise ValueError(f"{path}: not a BlobProto ({exc})") from None
    legacy = any(blob.HasField(name) for name in ("num", "channels", "height", "width"))
    if legacy:
        shape = [blob.num, blob.channels, blob.height, blob.width]
    else:
        shape = list(blob.shape.dim)
        if len(shape) == 3:
            shape.insert(0, 1)
    if len(shape) != 4:
        raise ValueError(f"{path}: mean shape {shape} is not (C, H, W) or (1, C, H, W)")
    if shape[0] != 1:
        raise ValueError(f"{path}: mean has num={shape[0]}, expected 1")
    if min(shape) < 1:
        raise ValueError(f"{path}: mean shape {shape} has an empty dimension")
    values = blob.double_data if len(blob.double_data) else blob.data
    expected = int(np.prod(shape))
    if len(values) != expected:
        raise ValueError(f"{path}: mean holds {len(values)} values but its shape "
                         f"{shape} needs {expected}")
    return np.asarray(values, dtype=np.float32).reshape(shape[1:])


def write_mean_binaryproto(path, mean_chw):
    """Write a (C, H, W) mean as Caffe's compute_image_mean does.

    The BlobProto has num=1, channels, height, width and float32 ``data``;
    ``shape`` is left unset.
    """
    mean = np.asarray(mean_chw, dtype=np.float32)
    if mean.ndim != 3:
        raise ValueError(f"write_mean_binaryproto needs a (C, H, W) array, got shape {mean.shape}")
    channels, height, width = mean.shape
    blob = BlobProto(num=1, channels=channels, height=height, width=width)
    blob.data.extend(mean.ravel().tolist())
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())
