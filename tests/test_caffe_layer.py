"""ZmqDataLayer in real Caffe: bit-identical to Caffe's Data layer, and clear errors.

Each test starts a real server process and runs a real caffe.Net in the Caffe
Python (tests/caffe_runner.py), over real tcp.
"""

import json

import numpy as np
import pytest

from caffe_runner import run_caffe_script
from harness.children import ServerProcess, free_port
from harness.datasets import random_images, smooth_images, write_lmdb
from server.caffe_proto import write_mean_binaryproto

pytestmark = pytest.mark.caffe

N = 30
BATCH = 8
ITERATIONS = 6  # 48 samples: wraps past the end of the 30-sample LMDB, as Caffe does


def zmq_layer(address, phase="TEST", extra=None):
    params = dict({"address": address, "timeout_s": 20}, **(extra or {}))
    return """layer { name: "data" type: "Python" top: "data" top: "label" include { phase: %s }
  python_param { module: "client_layer" layer: "ZmqDataLayer" param_str: '%s' } }
""" % (phase, json.dumps(params))


def data_layer(lmdb_path, transform):
    return """layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: "%s" backend: LMDB batch_size: %d }
  transform_param { %s } }
""" % (lmdb_path, BATCH, transform)


def run_net(tmp_path, name, text, iterations=ITERATIONS, phase="test"):
    net = tmp_path / (name + ".prototxt")
    net.write_text(text)
    out = tmp_path / (name + ".npz")
    run_caffe_script("run_net", net, phase, iterations, out, "data", "label")
    return np.load(out)


@pytest.fixture
def raw_lmdb(tmp_path):
    images = random_images(N, (3, 12, 14), seed=7)
    return write_lmdb(tmp_path / "db", images, [i % 10 for i in range(N)]), images


TRANSFORMS = {
    "crop-mean-file-scale": ("crop_size: 10 mean_file: \"{mean}\" scale: 0.5",
                             ["--crop-size", "10", "--mean-file", "{mean}", "--scale", "0.5"]),
    "crop-mean-values-scale": ("crop_size: 9 mean_value: 104 mean_value: 117 mean_value: 123.5 scale: 0.017",
                               ["--crop-size", "9", "--mean-value", "104,117,123.5", "--scale", "0.017"]),
    "one-mean-value": ("mean_value: 120 scale: 0.00390625", ["--mean-value", "120", "--scale", "0.00390625"]),
    "none": ("", []),
}


@pytest.mark.parametrize("case", sorted(TRANSFORMS))
def test_blobs_are_bit_identical_to_caffe_data_layer(tmp_path, raw_lmdb, case):
    db, images = raw_lmdb
    mean = tmp_path / "mean.binaryproto"
    write_mean_binaryproto(str(mean), np.random.default_rng(1).uniform(0, 255, (3, 12, 14)).astype(np.float32))
    caffe_transform, server_flags = TRANSFORMS[case]
    expected = run_net(tmp_path, "caffe", data_layer(db, caffe_transform.format(mean=mean)))
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--phase", "test",
            "--batch-size", str(BATCH), "--workers", "2"] + [f.format(mean=mean) for f in server_flags]
    with ServerProcess(args, tmp_path / "server.log") as server:
        got = run_net(tmp_path, "zfeed", zmq_layer("tcp://127.0.0.1:%d" % port))
        assert server.stop() == 0, server.log
    assert got["data"].shape == expected["data"].shape
    assert np.array_equal(got["data"], expected["data"])  # bit for bit, float32
    assert np.array_equal(got["label"], expected["label"])


def test_test_phase_mirror_gives_one_of_caffes_two_outputs(tmp_path, raw_lmdb):
    db, _ = raw_lmdb
    plain = run_net(tmp_path, "caffe", data_layer(db, "crop_size: 10 mean_value: 100"))
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--phase", "test",
            "--batch-size", str(BATCH), "--crop-size", "10", "--mean-value", "100", "--mirror"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        got = run_net(tmp_path, "zfeed", zmq_layer("tcp://127.0.0.1:%d" % port))
        server.stop()
    flips = 0
    for ours, caffes in zip(got["data"].reshape(-1, 3, 10, 10), plain["data"].reshape(-1, 3, 10, 10)):
        flipped = np.array_equal(ours, caffes[:, :, ::-1])
        assert flipped or np.array_equal(ours, caffes)
        flips += flipped
    assert 0 < flips < ITERATIONS * BATCH


@pytest.mark.parametrize("layer_extra, tops, message", [
    ({}, 'top: "data"', "ZmqDataLayer has 1 tops but delivers 2 arrays (data, label)"),
    ({"adress": "x"}, "", "unknown keys ['adress']"),
    ({"tops": ["data", "mask"]}, "", "batch has no array 'mask' (it has data, label)"),
])
def test_layer_configuration_errors_are_clear(tmp_path, raw_lmdb, layer_extra, tops, message):
    db, _ = raw_lmdb
    port = free_port()
    layer = zmq_layer("tcp://127.0.0.1:%d" % port, extra=layer_extra)
    if tops:
        layer = layer.replace('top: "data" top: "label"', tops)
    net = tmp_path / "net.prototxt"
    net.write_text(layer)
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4"]
    with ServerProcess(args, tmp_path / "server.log"):
        with pytest.raises(pytest.fail.Exception) as failed:
            run_caffe_script("run_net", net, "test", 1, tmp_path / "out.npz", "data")
    assert "exited with status 3" in str(failed.value) and message in str(failed.value)


def test_layer_without_server_fails_after_timeout_naming_the_address(tmp_path):
    port = free_port()
    net = tmp_path / "net.prototxt"
    net.write_text(zmq_layer("tcp://127.0.0.1:%d" % port, extra={"timeout_s": 1}))
    with pytest.raises(pytest.fail.Exception) as failed:
        run_caffe_script("run_net", net, "test", 1, tmp_path / "out.npz", "data")
    text = str(failed.value)
    assert "NoDataError: no batch within 1.0 s (connected to tcp://127.0.0.1:%d)" % port in text
    assert "is the data server running" in text


def test_layer_param_str_must_be_json(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(zmq_layer("x").replace(json.dumps({"address": "x", "timeout_s": 20}), "address=x"))
    with pytest.raises(pytest.fail.Exception) as failed:
        run_caffe_script("run_net", net, "test", 1, tmp_path / "out.npz", "data")
    assert "param_str is not JSON" in str(failed.value)


def served_train_blobs(tmp_path, db, name, options, crop=10):
    """The tops of a TRAIN net fed by a server with crop, mirror, mean values, scale and ``options``."""
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--phase", "train",
            "--batch-size", str(BATCH), "--seed", "11", "--crop-size", str(crop), "--mirror",
            "--mean-value", "104,117,123", "--scale", "0.017", *options]
    with ServerProcess(args, tmp_path / ("server-%s.log" % name)) as server:
        blobs = run_net(tmp_path, "net-" + name, zmq_layer("tcp://127.0.0.1:%d" % port, phase="TRAIN"),
                        phase="train")
        assert server.stop() == 0, server.log
    return blobs, server.log


def test_uint8_and_float32_wire_give_identical_blobs_in_caffe(tmp_path, raw_lmdb):
    db, _ = raw_lmdb
    pixels, _ = served_train_blobs(tmp_path, db, "auto", ["--wire-format", "auto"])
    floats, _ = served_train_blobs(tmp_path, db, "float32", ["--wire-format", "float32"])
    assert np.array_equal(pixels["data"], floats["data"])
    assert np.array_equal(pixels["label"], floats["label"])
    assert np.unique(pixels["data"]).size > 100  # real, varied pixels


def test_compressed_streams_give_identical_blobs_in_caffe(tmp_path):
    """The trainer side decompresses (zstandard, lz4 in Caffe's Python) to the very same blobs.
    (test_server.py shows that batches of these images do shrink on the wire.)"""
    db = write_lmdb(tmp_path / "db", smooth_images(N, (3, 40, 48), seed=3), [i % 10 for i in range(N)])
    plain, _ = served_train_blobs(tmp_path, db, "off", [], crop=32)
    for codec in ("zstd", "lz4"):
        blobs, log = served_train_blobs(tmp_path, db, codec, ["--compress", codec], crop=32)
        assert "compressing with %s" % codec in log
        assert np.array_equal(blobs["data"], plain["data"])
        assert np.array_equal(blobs["label"], plain["label"])


def test_layer_serves_its_own_deliveries_and_waiting_share(tmp_path, raw_lmdb):
    db, _ = raw_lmdb
    port, metrics_port = free_port(), free_port()
    net = tmp_path / "net.prototxt"
    net.write_text(zmq_layer("tcp://127.0.0.1:%d" % port, extra={"metrics_port": metrics_port}))
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(BATCH)]
    with ServerProcess(args, tmp_path / "server.log") as server:
        text = run_caffe_script("layer_metrics", net, 7, metrics_port).stdout
        server.stop()
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("zfeed_layer_")}
    assert values["zfeed_layer_batches_received_total"] == 7
    assert values["zfeed_layer_samples_received_total"] == 7 * BATCH
    assert values["zfeed_layer_rejected_messages_total"] == 0
    assert 0 <= values["zfeed_layer_wait_share"] <= 1 and values["zfeed_layer_seconds_total"] > 0
    assert 'phase="test"' in text
