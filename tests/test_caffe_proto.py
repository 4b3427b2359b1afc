"""server.caffe_proto: Caffe's Datum and BlobProto built without Caffe."""

import numpy as np
import pytest
from google.protobuf import descriptor_pool
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.caffe_proto import (BlobProto, BlobShape, Datum, encoded_datum, image_to_datum,
                                read_mean_binaryproto, write_mean_binaryproto)

pytestmark = pytest.mark.unit


def test_messages_live_outside_the_default_pool():
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("caffe.Datum")
    assert Datum.DESCRIPTOR.full_name == "caffe.Datum"
    assert BlobProto.DESCRIPTOR.full_name == "caffe.BlobProto"


def test_raw_datum_round_trip_is_chw_bytes():
    image = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = Datum.FromString(image_to_datum(image, 5).SerializeToString())
    assert (parsed.channels, parsed.height, parsed.width, parsed.label) == (2, 3, 4, 5)
    assert not parsed.encoded and not parsed.HasField("encoded")
    assert parsed.data == image.tobytes()
    restored = np.frombuffer(parsed.data, np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(restored, image)


def test_raw_datum_of_a_non_contiguous_view_is_c_order():
    hwc = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    chw = hwc.transpose(2, 0, 1)
    assert image_to_datum(chw, 0).data == np.ascontiguousarray(chw).tobytes()


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4), np.float32), np.zeros((3, 4), np.uint8)])
def test_image_to_datum_rejects_non_uint8_chw(bad):
    with pytest.raises(ValueError, match="uint8 \\(C, H, W\\)"):
        image_to_datum(bad, 0)


def test_encoded_datum_leaves_the_size_unset():
    datum = encoded_datum(b"xy", 3)
    # Field numbers 4 (data), 5 (label), 7 (encoded), as in caffe.proto.
    assert datum.SerializeToString() == b"\x22\x02xy\x28\x03\x38\x01"
    assert not any(datum.HasField(name) for name in ("channels", "height", "width"))


def test_blob_data_is_packed():
    blob = BlobProto(data=[1.0])
    # Tag 0x2a: field 5, wire type 2 (length-delimited), i.e. packed floats.
    assert blob.SerializeToString() == b"\x2a\x04" + np.float32(1.0).tobytes()
    assert BlobShape(dim=[1, 2]).SerializeToString() == b"\x0a\x02\x01\x02"


def test_mean_round_trip_is_written_like_compute_image_mean(tmp_path):
    mean = np.random.default_rng(0).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_mean_binaryproto(path, mean)
    blob = BlobProto.FromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    assert not blob.HasField("shape") and len(blob.double_data) == 0
    np.testing.assert_array_equal(read_mean_binaryproto(path), mean)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, max_side=5),
                  elements=st.floats(-1e6, 1e6, width=32)))
def test_mean_round_trip_is_exact(tmp_path_factory, mean):
    path = tmp_path_factory.mktemp("mean") / "mean.binaryproto"
    write_mean_binaryproto(path, mean)
    result = read_mean_binaryproto(path)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, mean)


@pytest.mark.parametrize("dims", [[1, 2, 3, 4], [2, 3, 4]])
def test_mean_with_shape_dim_reads_like_legacy(tmp_path, dims):
    values = np.arange(24, dtype=np.float32) / 4
    legacy = BlobProto(num=1, channels=2, height=3, width=4, data=values)
    modern = BlobProto(shape=BlobShape(dim=dims), data=values)
    for name, blob in (("legacy", legacy), ("modern", modern)):
        (tmp_path / name).write_bytes(blob.SerializeToString())
    expected = values.reshape(2, 3, 4)
    np.testing.assert_array_equal(read_mean_binaryproto(tmp_path / "legacy"), expected)
    np.testing.assert_array_equal(read_mean_binaryproto(tmp_path / "modern"), expected)


def test_mean_prefers_double_data(tmp_path):
    blob = BlobProto(shape=BlobShape(dim=[1, 1, 1, 2]), double_data=[0.5, 1.5])
    (tmp_path / "m").write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(read_mean_binaryproto(tmp_path / "m"), [[[0.5, 1.5]]])


@pytest.mark.parametrize("blob, message", [
    (BlobProto(num=1, channels=2, height=3, width=4, data=[0.0] * 23),
     "holds 23 values but its shape \\[1, 2, 3, 4\\] needs 24"),
    (BlobProto(num=2, channels=1, height=1, width=1, data=[0.0, 0.0]), "num=2, expected 1"),
    (BlobProto(shape=BlobShape(dim=[4, 4]), data=[0.0] * 16), "is not \\(C, H, W\\)"),
    (BlobProto(data=[1.0]), "is not \\(C, H, W\\)"),
    (BlobProto(num=1, channels=0, height=1, width=1), "empty dimension"),
])
def test_bad_mean_files_are_named_in_the_error(tmp_path, blob, message):
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(blob.SerializeToString())
    with pytest.raises(ValueError, match=message) as excinfo:
        read_mean_binaryproto(path)
    assert str(path) in str(excinfo.value)


def test_a_file_that_is_no_blobproto_is_named_in_the_error(tmp_path):
    path = tmp_path / "garbage.binaryproto"
    path.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="garbage.binaryproto: not a BlobProto"):
        read_mean_binaryproto(path)


def test_write_mean_rejects_a_non_chw_array(tmp_path):
    with pytest.raises(ValueError, match="\\(C, H, W\\)"):
        write_mean_binaryproto(tmp_path / "m", np.zeros((1, 2, 3, 4)))
