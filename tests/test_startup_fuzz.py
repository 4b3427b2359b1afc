"""Property: whatever options and ZFEED_* variables a user gives, start-up either accepts them or
refuses them with ConfigError (exit status 2): never another exception, never a hang.

The options come from a grammar of the server's real options, each with good values (so that
checks further in are reached) and bad ones; files named by options exist in good and broken
forms. Each case runs the real start-up validation in-process: ``prepare(parse_config(...))``.
400 derandomized cases by default; FUZZ_EXAMPLES=N runs N random ones instead."""

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.datasets import random_images, write_lmdb, write_npz
from server.caffe_proto import write_mean_binaryproto
from server.config import ConfigError, parse_config, prepare
from server.options import ENVIRONMENT, ENVIRONMENT_LISTS, ENVIRONMENT_SWITCHES
from server.tools.keygen import main as keygen

pytestmark = pytest.mark.unit

# Text a real argv or environment can hold: anything but NUL.
TEXT = st.text(st.characters(blacklist_characters="\0"), max_size=12)
NUMBERS = st.one_of(st.integers(-2**70, 2**70).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "0x10", "1_000", " 3", "", "1,2"]))
BAD = st.one_of(NUMBERS, TEXT)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and broken files for every option that names one."""
    root = tmp_path_factory.mktemp("fuzz")
    images = random_images(6)
    write_npz(root / "d.npz", images, range(6))
    write_lmdb(root / "db", images, range(6))
    write_mean_binaryproto(str(root / "mean.binaryproto"), np.zeros((3, 12, 14), np.float32))
    write_mean_binaryproto(str(root / "small_mean.binaryproto"), np.zeros((3, 4, 4), np.float32))
    for name in ("server", "trainer"):
        assert keygen([str(root / "keys"), name]) == 0
    keys = root / "keys"
    (keys / "cut.key").write_text((keys / "trainer.key").read_text()[:-30])
    (keys / "garbage.key_secret").write_bytes(bytes(range(256)))
    (root / "net.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }\n'
        '  transform_param { crop_size: 8 mirror: true scale: 0.5 }\n'
        '  data_param { source: "%s" batch_size: 3 backend: LMDB } }\n' % (root / "db"))
    (root / "deep.prototxt").write_text('layer { type: "X" p { %s } }' % ("a {" * 3000 + "}" * 3000))
    (root / "binary.prototxt").write_bytes(b"\xff\xfe layer {")
    (root / "state").mkdir()
    return root


def option_values(files):
    """Option -> (strategy of good values, of bad values); None for a flag."""
    def path(*names):
        return st.sampled_from([str(files / n) for n in names]), st.one_of(
            st.sampled_from(["/nonexistent", str(files)]), TEXT)

    def ints(low, high):
        return st.integers(low, high).map(str), BAD

    def choice(good, bad):
        return st.sampled_from(good), st.one_of(st.sampled_from(bad), TEXT)

    def endpoint():
        hosts = st.sampled_from(["127.0.0.1", "*", "[::1]", "", "localhost", "a;b"])
        ports = st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["*", "!", "", "x"]))
        built = st.builds(lambda scheme, host, port: "%s%s:%s" % (scheme, host, port),
                          st.sampled_from(["tcp://", "ipc://", "udp://", ""]), hosts, ports)
        return st.sampled_from(["tcp://127.0.0.1:5555", "tcp://*:6000", "ipc:///tmp/x"]), st.one_of(built, TEXT)

    return {
        "--source": choice(["npz:%s" % (files / "d.npz"), "lmdb:%s" % (files / "db")],
                           ["npz:/nonexistent", "csv:x", "python:os:getcwd", "hdf5:", "lmdb:%s" % files]),
        "--from-prototxt": path("net.prototxt", "deep.prototxt", "binary.prototxt", "d.npz"),
        "--batch-size": ints(1, 8), "--workers": ints(1, 4),
        "--seed": (st.one_of(st.integers(0, 2**64 - 1).map(str), st.just("hostname")), BAD),
        "--epochs": ints(1, 3), "--max-inflight-mb": choice(["0.001", "1", "512"], ["nan", "inf", "-1", "0"]),
        "--crop-size": ints(0, 14), "--mean-value": choice(["104,117,123", "1"], ["1,2", "nan", "1,,2"]),
        "--mean-file": path("mean.binaryproto", "small_mean.binaryproto", "d.npz"),
        "--scale": choice(["0.5", "1"], ["nan", "inf", "0", "-1"]), "--log-interval": choice(["5", "0.1"], ["-1"]),
        "--shard": choice(["0/1", "1/2", "5/6", "6/7", "hostname/2"], ["2/1", "0/0", "-1/2"]),
        "--metrics-port": ints(0, 65535), "--phase": choice(["train", "test"], ["TRAIN", ""]),
        "--wire-format": choice(["auto", "float32"], ["uint8"]),
        "--compress": choice(["off", "lz4", "zstd", "zstd:3"], ["zstd:99", "lz4:1", "zstd:x"]),
        "--bind": endpoint(), "--connect": endpoint(), "--stream-id": (st.just("a:1"), TEXT),
        "--on-bad-sample": choice(["skip", "fail"], ["x"]),
        "--state-dir": path("state", "d.npz"),
        "--curve-secret-key": path("keys/server.key_secret", "keys/server.key", "keys/garbage.key_secret"),
        "--allow-client-key": path("keys/trainer.key", "keys/cut.key", "keys/garbage.key_secret"),
        "--root-folder": (st.just(str(files)), TEXT), "--new-height": ints(0, 20), "--new-width": ints(0, 20),
        "--datasets": (st.just("data,label"), TEXT),
        "--layer": (st.just("d"), TEXT), "--stage": (st.just("s"), TEXT), "--level": ints(-2, 2),
        "--working-dir": path("state"),
        "--mirror": None, "--shuffle": None, "--no-shuffle": None, "--force-color": None, "--force-gray": None,
    }


@st.composite
def command_lines(draw, files):
    """(argv, environ): the data (a source or a prototxt, mostly good), then a few options,
    each value good three times in four."""
    values = option_values(files)
    argv = []
    data = draw(st.sampled_from(["--source", "--source", "--from-prototxt", None]))
    if data:
        good, bad = values[data]
        argv += [data, draw(good if draw(st.integers(0, 3)) else bad)]
    for option in draw(st.lists(st.sampled_from(sorted(values)), max_size=6)):
        argv.append(option)
        if values[option] is not None:
            good, bad = values[option]
            argv.append(draw(good if draw(st.integers(0, 3)) else bad))
    environ = draw(st.dictionaries(
        st.sampled_from(sorted(ENVIRONMENT) + sorted(ENVIRONMENT_LISTS) + sorted(ENVIRONMENT_SWITCHES)),
        st.one_of(st.sampled_from(["1", "no", "maybe", "tcp://127.0.0.1:5555, tcp://*:6"]), BAD), max_size=2))
    return argv, environ


def test_every_command_line_is_served_or_refused_with_config_error(files):
    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 400)), deadline=None, derandomize=not os.environ.get("FUZZ_EXAMPLES"),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(command_lines(files))
    def start_up(case):
        argv, environ = case
        try:
            prepared = prepare(parse_config(argv, environ))
        except ConfigError as exc:
            assert str(exc)  # a message to act on
            return
        assert prepared.specs and all(math.isfinite(s.nbytes) for s in prepared.specs)

    start_up()
