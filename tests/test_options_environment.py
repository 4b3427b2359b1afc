"""ZFEED_* variables are options too (server/options.py): a container needs no script to map them."""

import socket

import pytest

from server.config import ConfigError, parse_config

pytestmark = pytest.mark.unit


def test_variables_become_options_and_the_command_line_wins():
    environ = {"ZFEED_SOURCE": "lmdb:/data/my train_lmdb", "ZFEED_PHASE": "train", "ZFEED_BATCH_SIZE": "32",
               "ZFEED_MIRROR": "yes", "ZFEED_SHUFFLE": "false", "ZFEED_MEAN_VALUE": "104,117,123",
               "ZFEED_BIND": "tcp://*:5555", "ZFEED_CONNECT": "tcp://trainer-a:5555, tcp://trainer-b:5555",
               "ZFEED_SHARD": "1/3", "ZFEED_METRICS_PORT": "9100", "ZFEED_EPOCHS": "", "ZFEED_COMPRESS": "zstd:1",
               "ZFEED_READY_FILE": "/tmp/zfeed.ready",
               "ZFEED_CAFFE_PYTHON": "/not/an/option"}
    config = parse_config(["--batch-size", "16", "--crop-size", "8"], environ)
    assert config.source == "lmdb:/data/my train_lmdb" and config.phase == "train"  # a space stays in its value
    assert config.mirror is True and config.shuffle is False and config.mean_values == (104.0, 117.0, 123.0)
    assert config.bind == ["tcp://*:5555"]
    assert config.connect == ["tcp://trainer-a:5555", "tcp://trainer-b:5555"]
    assert (config.shard.index, config.shard.count, config.metrics_port, config.epochs) == (1, 3, 9100, None)
    assert config.compress == ("zstd", 1) and config.ready_file == "/tmp/zfeed.ready"
    assert config.batch_size == 16 and config.crop_size == 8  # the command line comes last: it wins


def test_a_value_that_starts_with_a_dash_stays_a_value():
    assert parse_config(["--source", "npz:x"], {"ZFEED_STREAM_ID": "--odd-name"}).stream_id == "--odd-name"


def test_no_variables_no_options():
    assert parse_config(["--source", "npz:x"], {}).mirror is False
    assert parse_config(["--source", "npz:x"], {"ZFEED_MIRROR": "0"}).mirror is False


@pytest.mark.parametrize("name", ["ZFEED_MIRROR", "ZFEED_SHUFFLE"])
def test_a_switch_that_is_not_a_boolean_is_refused(name):
    with pytest.raises(ConfigError, match="%s=maybe: expected 1/true/yes or 0/false/no" % name):
        parse_config(["--source", "npz:x"], {name: "maybe"})


def test_a_bad_value_names_its_variable():
    with pytest.raises(ConfigError, match=r"--seed -1: .*\(ZFEED_SEED sets --seed\)"):
        parse_config(["--source", "npz:x"], {"ZFEED_SEED": "-1"})


def test_an_endpoint_given_twice_is_one_endpoint():
    """ZFEED_BIND and --bind naming the same endpoint: one bind."""
    config = parse_config(["--source", "npz:x", "--bind", "tcp://*:5555"], {"ZFEED_BIND": "tcp://*:5555"})
    assert config.bind == ["tcp://*:5555"]


def test_seed_hostname_gives_each_replica_its_own_seed(monkeypatch):
    def seed(hostname):
        monkeypatch.setattr(socket, "gethostname", lambda: hostname)
        return parse_config([], {"ZFEED_SEED": "hostname", "ZFEED_SOURCE": "npz:/data/a.npz"}).seed

    assert seed("zfeed-trainserver-1") == seed("zfeed-trainserver-1") != seed("zfeed-trainserver-2")
