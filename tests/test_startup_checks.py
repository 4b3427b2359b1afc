"""Start-up refusals, in-process: every setting the server cannot honour stops it before
anything starts, with ConfigError (exit status 2) naming the option and what to change."""

import logging

import numpy as np
import pytest

from client_layer import wire
from harness.datasets import random_images, write_npz
from server.__main__ import main
from server.caffe_proto import write_mean_binaryproto
from server.config import ConfigError, parse_config, prepare

pytestmark = pytest.mark.unit


@pytest.fixture
def source(tmp_path):
    return "npz:%s" % write_npz(tmp_path / "d.npz", random_images(6), range(6))


def refusal(argv) -> str:
    """The message of the ConfigError that start-up raises for ``argv``."""
    with pytest.raises(ConfigError) as refused:
        prepare(parse_config(argv))
    return str(refused.value)


@pytest.mark.parametrize("extra, option", [
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**64)], "--seed"),
    (["--max-inflight-mb", "inf"], "--max-inflight-mb inf"),
    (["--max-inflight-mb", "nan"], "--max-inflight-mb nan"),
    (["--metrics-port", "99999"], "--metrics-port 99999"),
    (["--scale", "nan"], "--scale nan"),
    (["--scale", "inf"], "--scale inf"),
    (["--mean-value", "nan"], "--mean-value"),
    (["--mean-value", "104,inf,123"], "--mean-value"),
    (["--log-interval", "-1"], "--log-interval -1"),
    (["--log-interval", "nan"], "--log-interval nan"),
    (["--bind", "tcp://127.0.0.1:99999"], "--bind tcp://127.0.0.1:99999"),
    (["--bind", "tcp://127.0.0.1"], "--bind tcp://127.0.0.1"),
    (["--connect", "tcp://127.0.0.1:0"], "--connect tcp://127.0.0.1:0"),
    (["--connect", "tcp://:5555"], "--connect tcp://:5555"),
    (["--seed", "x"], "--seed"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_values_are_refused_naming_the_option(source, extra, option):
    assert option in refusal(["--source", source, *extra])


@pytest.mark.parametrize("extra, message", [
    (["--mean-file", "m.binaryproto", "--mean-value", "1,2,3"], "--mean-file and --mean-value are both set"),
    (["--crop-size", "13"], "--crop-size 13 is larger than the 12x14 images"),
    (["--mean-value", "1,2"], "--mean-value has 2 values but the images have 3 channels"),
    (["--mean-file", "missing.binaryproto"], "--mean-file missing.binaryproto"),
    (["--force-color", "--force-gray"], "choose one"),
    (["--bind", "udp://x"], "expected tcp://"),
    (["--compress", "brotli"], "expected off, lz4, zstd or zstd:LEVEL"),
    (["--compress", "lz4:3"], "only zstd takes a level"),
    (["--compress", "zstd:99"], "zstd level 99: use -20 (fastest) to 22 (smallest)"),
    (["--ready-file", "/nonexistent/ready"], "--ready-file /nonexistent/ready: its directory /nonexistent does not exist"),
    (["--ready-file", "/"], "--ready-file /: is a directory"),
])
def test_conflicting_or_unusable_settings_are_refused(source, extra, message):
    assert message in refusal(["--source", source, *extra])


def test_wrong_size_mean_file_is_refused(tmp_path, source):
    mean = tmp_path / "mean.binaryproto"
    write_mean_binaryproto(str(mean), np.zeros((3, 10, 10), np.float32))
    assert "is 3x10x10 (C x H x W) but the images are 3x12x14" in refusal(["--source", source, "--mean-file", str(mean)])


@pytest.mark.parametrize("source, message", [
    ("lmdb:/nonexistent/db", "LMDB /nonexistent/db does not exist"),
    ("imagelist:/nonexistent/list.txt", "cannot read image list /nonexistent/list.txt"),
    ("csv:x", "expected KIND:PATH"),
])
def test_unusable_sources_are_refused_naming_the_option_once(source, message):
    refused = refusal(["--source", source])
    assert message in refused and refused.count("--source") == 1


def test_refusal_is_exit_status_2_with_the_message_logged(source, caplog):
    with caplog.at_level(logging.ERROR, logger="zfeed.server"):
        assert main(["--source", source, "--seed", "-1"], ending_process=False) == 2
    assert "--seed -1" in caplog.text


@pytest.mark.parametrize("endpoint", ["tcp://*:5555", "tcp://127.0.0.1:65535", "tcp://[::1]:5555",
                                      "tcp://eth0:1", "ipc:///tmp/zfeed.sock"])
def test_good_endpoints_pass(source, endpoint):
    assert parse_config(["--source", source, "--bind", endpoint]).bind == [endpoint]


def test_deeply_nested_prototxt_is_refused_naming_the_file(tmp_path):
    net = tmp_path / "deep.prototxt"
    depth = 5000
    net.write_text('layer { name: "odd" type: "Fork" blob { %s } }\n' % ("a {" * depth + "}" * depth))
    message = refusal(["--from-prototxt", str(net)])
    assert str(net) in message and "nested" in message


# -- batches that could never be delivered ------------------------------------------------

def test_header_over_the_layers_limit_is_refused(tmp_path):
    source = "npz:%s" % write_npz(tmp_path / "mnist.npz", random_images(4, (1, 28, 28)), range(4))
    samples = 360000
    header = wire.encode_header("host:1", 0, [wire.array_spec("label", np.float32, (samples,))],
                                np.zeros(samples, np.int64), np.zeros(samples, np.int32))
    assert len(header) > wire.MAX_HEADER_BYTES  # what the trainer's layer would drop
    message = refusal(["--source", source, "--batch-size", str(samples), "--max-inflight-mb", "100000"])
    assert "--batch-size 360000" in message and "header" in message
    smallest_refused = int(message.split("at most ")[1].split()[0]) + 1
    assert "--batch-size" not in _refusal_or_none(
        ["--source", source, "--batch-size", str(smallest_refused - 1), "--max-inflight-mb", "100000"])


def _refusal_or_none(argv) -> str:
    try:
        prepare(parse_config(argv))
    except ConfigError as exc:
        return str(exc)
    return ""


def test_sample_row_over_the_frame_limit_is_refused(tmp_path):
    side = 2100  # one float32 row: 2100 * 2100 * 4 bytes, over the 16 MiB frame limit
    source = "npz:%s" % write_npz(tmp_path / "big.npz", np.zeros((1, 1, side, side), np.uint8), [0])
    message = refusal(["--source", source, "--wire-format", "float32", "--batch-size", "1"])
    assert "--source" in message and "frame limit" in message and "--crop-size" in message


def test_memory_budget_below_two_slots_is_refused_saying_the_minimum(source):
    message = refusal(["--source", source, "--batch-size", "6", "--max-inflight-mb", "0.001"])
    assert "--max-inflight-mb 0.001" in message
    minimum = float(message.split("at least ")[1].split()[0].rstrip(","))
    prepare(parse_config(["--source", source, "--batch-size", "6", "--max-inflight-mb", str(minimum)]))


def test_empty_shard_is_refused_at_start_up(source):
    assert "--shard 7/8" in refusal(["--source", source, "--shard", "7/8"])


def test_batch_slots_beyond_the_machines_memory_are_refused(tmp_path):
    source = "npz:%s" % write_npz(tmp_path / "big.npz", np.zeros((1, 1, 1000, 1000), np.uint8), [0])
    message = refusal(["--source", source, "--batch-size", "300000", "--max-inflight-mb", "1e12"])
    assert "--batch-size 300000" in message and "this machine's" in message  # 2 slots of 300 GB
