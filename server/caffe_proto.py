"""Caffe's ``Datum``, ``BlobShape`` and ``BlobProto`` messages, without Caffe.

The three messages are declared here field for field as in BVLC
``src/caffe/proto/caffe.proto`` (package ``caffe``, proto2: same numbers,
types, labels, defaults and packing), so their bytes are exactly what Caffe
reads and writes: Datums in an LMDB, means in a ``.binaryproto``.

The descriptors live in a private descriptor pool, never the default one, so
importing this module next to a real ``caffe_pb2`` cannot clash.
"""

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, ftype, label=_F.LABEL_OPTIONAL, *, default=None,
           packed=False, type_name=None):
    field = _F(name=name, number=number, type=ftype, label=label)
    if default is not None:
        field.default_value = default
    if packed:
        field.options.packed = True
    if type_name is not None:
        field.type_name = type_name
    return field


def _file_descriptor_proto():
    rep = _F.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(
        name="zfeed/caffe_subset.proto", package="caffe", syntax="proto2")
    proto.message_type.add(name="BlobShape", field=[
        _field("dim", 1, _F.TYPE_INT64, rep, packed=True),
    ])
    proto.message_type.add(name="BlobProto", field=[
        _field("shape", 7, _F.TYPE_MESSAGE, type_name=".caffe.BlobShape"),
        _field("data", 5, _F.TYPE_FLOAT, rep, packed=True),
        _field("diff", 6, _F.TYPE_FLOAT, rep, packed=True),
        _field("double_data", 8, _F.TYPE_DOUBLE, rep, packed=True),
        _field("double_diff", 9, _F.TYPE_DOUBLE, rep, packed=True),
        _field("num", 1, _F.TYPE_INT32, default="0"),
        _field("channels", 2, _F.TYPE_INT32, default="0"),
        _field("height", 3, _F.TYPE_INT32, default="0"),
        _field("width", 4, _F.TYPE_INT32, default="0"),
    ])
    proto.message_type.add(name="Datum", field=[
        _field("channels", 1, _F.TYPE_INT32),
        _field("height", 2, _F.TYPE_INT32),
        _field("width", 3, _F.TYPE_INT32),
        _field("data", 4, _F.TYPE_BYTES),
        _field("label", 5, _F.TYPE_INT32),
        _field("float_data", 6, _F.TYPE_FLOAT, rep),
        _field("encoded", 7, _F.TYPE_BOOL, default="false"),
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
