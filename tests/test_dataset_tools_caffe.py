"""Cross-checks of caffe_proto and the dataset tools against real Caffe.

The Caffe side runs in its own Python (see caffe_runner); these tests fail,
never skip, when it is missing.
"""

import json

import cv2
import lmdb
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from caffe_runner import run_caffe_script
from server.caffe_proto import (BlobProto, BlobShape, Datum, read_mean_binaryproto,
                                write_mean_binaryproto)
from server.tools.compute_image_mean import compute_image_mean
from server.tools.convert_imageset import convert_imageset

pytestmark = pytest.mark.caffe


def write_images(root, count, shape, seed=0):
    """Write ``count`` random PNGs under root/c<i%2>/; returns [(relative path, label, HWC)]."""
    rng = np.random.default_rng(seed)
    written = []
    for i in range(count):
        name = f"c{i % 2}/img {i}.png"
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), image)
        written.append((name, i % 2, image))
    return written


def chw(image_hwc):
    return image_hwc.reshape(image_hwc.shape[:2] + (-1,)).transpose(2, 0, 1)


def describe(message_class):
    proto = descriptor_pb2.DescriptorProto()
    message_class.DESCRIPTOR.CopyToProto(proto)
    return [{"name": f.name, "number": f.number, "label": f.label, "type": f.type,
             "type_name": f.type_name, "default_value": f.default_value,
             "packed": f.options.packed} for f in proto.field]


def test_messages_match_real_caffe_field_for_field():
    real = json.loads(run_caffe_script("describe_messages.py").stdout)
    ours = {"Datum": describe(Datum), "BlobShape": describe(BlobShape),
            "BlobProto": describe(BlobProto)}
    assert ours == real


def test_real_caffe_parses_our_lmdb_datums(tmp_path):
    written = write_images(tmp_path / "set", 2, (3, 4, 3))
    entries = [(name, label) for name, label, _ in written]
    convert_imageset(entries, str(tmp_path / "raw"), root_folder=str(tmp_path / "set"))
    convert_imageset(entries, str(tmp_path / "enc"), root_folder=str(tmp_path / "set"),
                     encoded=True)
    files = []
    for db in ("raw", "enc"):
        with lmdb.open(str(tmp_path / db), readonly=True, lock=False) as env, env.begin() as txn:
            for i, (_, value) in enumerate(txn.cursor()):
                files.append(tmp_path / f"{db}{i}.bin")
                files[-1].write_bytes(value)
    parsed = json.loads(run_caffe_script("parse_datums.py", *files).stdout)
    for datum, (_, label, image) in zip(parsed[:2], written):
        assert datum["set_fields"] == ["channels", "data", "height", "label", "width"]
        assert (datum["channels"], datum["height"], datum["width"]) == (3, 3, 4)
        assert (datum["label"], datum["encoded"]) == (label, False)
        assert bytes.fromhex(datum["data"]) == chw(image).tobytes()
    for datum, (name, label, _) in zip(parsed[2:], written):
        assert datum["set_fields"] == ["data", "encoded", "label"]
        assert (datum["label"], datum["encoded"]) == (label, True)
        assert bytes.fromhex(datum["data"]) == (tmp_path / "set" / name).read_bytes()


def test_real_caffe_parses_our_mean_file(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 2, 5)).astype(np.float32)
    write_mean_binaryproto(tmp_path / "mean.binaryproto", mean)
    report = json.loads(run_caffe_script("parse_blobproto.py", tmp_path / "mean.binaryproto",
                                         tmp_path / "mean.npy").stdout)
    assert report["set_fields"] == ["channels", "data", "height", "num", "width"]
    assert (report["num"], report["channels"], report["height"], report["width"]) == (1, 3, 2, 5)
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), mean[np.newaxis])


def test_we_read_what_real_caffe_writes(tmp_path):
    run_caffe_script("write_caffe_protos.py", tmp_path)
    image = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for name in ("mean_shape_dim.binaryproto", "mean_legacy.binaryproto"):
        np.testing.assert_array_equal(read_mean_binaryproto(tmp_path / name), image / 8.0)
    datum = Datum.FromString((tmp_path / "datum_raw.bin").read_bytes())
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == image.astype(np.uint8).tobytes()


@pytest.mark.parametrize("options", [
    {},
    {"encoded": True},
    {"encoded": True, "encode_type": "png", "resize": (3, 5)},
    {"gray": True},
], ids=["raw", "encoded-png", "encoded-resized", "raw-gray"])
def test_caffe_data_layer_yields_our_images(tmp_path, options):
    written = write_images(tmp_path / "set", 4, (4, 6, 3))
    convert_imageset([(name, label) for name, label, _ in written], str(tmp_path / "db"),
                     root_folder=str(tmp_path / "set"), **options)
    run_caffe_script("run_data_layer.py", tmp_path / "db", len(written), tmp_path)
    expected = []
    for name, _, image in written:
        if options.get("gray"):
            image = cv2.imread(str(tmp_path / "set" / name), cv2.IMREAD_GRAYSCALE)
        if "resize" in options:
            height, width = options["resize"]
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        expected.append(chw(image))
    np.testing.assert_array_equal(np.load(tmp_path / "data.npy"), np.array(expected, np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "label.npy"),
                                  [label for _, label, _ in written])


def test_caffe_data_layer_subtracts_our_mean_file(tmp_path):
    written = write_images(tmp_path / "set", 3, (4, 6, 3))
    convert_imageset([(name, label) for name, label, _ in written], str(tmp_path / "db"),
                     root_folder=str(tmp_path / "set"))
    mean = compute_image_mean(str(tmp_path / "db"))
    write_mean_binaryproto(tmp_path / "mean.binaryproto", mean)
    run_caffe_script("run_data_layer.py", tmp_path / "db", len(written), tmp_path,
                     tmp_path / "mean.binaryproto")
    expected = np.array([chw(image) for _, _, image in written], np.float32) - mean
    np.testing.assert_allclose(np.load(tmp_path / "data.npy"), expected, atol=1e-4)
