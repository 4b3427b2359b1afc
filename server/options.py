"""The data server's command line: its options, their ``ZFEED_*`` environment variables.

``build_parser()`` is the one list of options; ``environment_arguments``
turns the ``ZFEED_*`` variables of ``ENVIRONMENT`` into options placed
before the command line's own (so that the command line wins), which is all
a container needs to configure a server. The parser checks the syntax of
each value and raises ``ConfigError`` instead of exiting; ``server.config``
checks what the values mean. The data options have no argparse default
(None when not given, see ``server.data_options.DEFAULTS``), so that what a
user gives can be told from what they left out.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import zlib
from typing import List, Mapping, Optional, Tuple

from client_layer.compression import CODECS, DEFAULT_ZSTD_LEVEL
from server.data_options import DEFAULTS as DATA_DEFAULTS, add_arguments as add_data_arguments
from server.plan import Shard
from server.transform import TEST, TRAIN

DEFAULT_BIND = "tcp://*:5555"
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = -20, 22
SEED_LIMIT = 2**64  # seeds are 0 .. 2**64 - 1
DEFAULT_MAX_BATCHES_PER_MESSAGE = 64  # NOTE [ Batches per message ] in server/assembly.py

# Variable -> option. Empty variables are ignored.
ENVIRONMENT = {
    "ZFEED_SOURCE": "--source", "ZFEED_FROM_PROTOTXT": "--from-prototxt", "ZFEED_ROOT_FOLDER": "--root-folder",
    "ZFEED_PHASE": "--phase", "ZFEED_BATCH_SIZE": "--batch-size", "ZFEED_WORKERS": "--workers",
    "ZFEED_SEED": "--seed", "ZFEED_EPOCHS": "--epochs", "ZFEED_SHARD": "--shard",
    "ZFEED_MAX_INFLIGHT_MB": "--max-inflight-mb", "ZFEED_MAX_BATCHES_PER_MESSAGE": "--max-batches-per-message",
    "ZFEED_CROP_SIZE": "--crop-size",
    "ZFEED_MEAN_VALUE": "--mean-value", "ZFEED_MEAN_FILE": "--mean-file", "ZFEED_SCALE": "--scale",
    "ZFEED_METRICS_PORT": "--metrics-port", "ZFEED_STATE_DIR": "--state-dir",
    "ZFEED_ON_BAD_SAMPLE": "--on-bad-sample", "ZFEED_STREAM_ID": "--stream-id",
    "ZFEED_WIRE_FORMAT": "--wire-format", "ZFEED_COMPRESS": "--compress", "ZFEED_READY_FILE": "--ready-file",
}
# Variable -> option per endpoint, the endpoints separated by spaces or commas.
ENVIRONMENT_LISTS = {"ZFEED_BIND": "--bind", "ZFEED_CONNECT": "--connect"}
# Variable -> (option when true, option when false): 1/true/yes or 0/false/no.
ENVIRONMENT_SWITCHES = {"ZFEED_MIRROR": ("--mirror", None), "ZFEED_SHUFFLE": ("--shuffle", "--no-shuffle")}
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


class ConfigError(ValueError):
    """A configuration the server refuses; the message says what to change."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError("%s (python -m server --help lists the options)" % message)


def environment_arguments(environ: Mapping[str, str]) -> List[Tuple[str, str, List[str]]]:
    """(variable, option, arguments) for each ``ZFEED_*`` variable set in ``environ``, in table order.
    Values are attached (``--stream-id=-x``), so that one that starts with a dash stays a value."""
    given = []
    for name, option in ENVIRONMENT.items():
        if environ.get(name):
            given.append((name, option, ["%s=%s" % (option, environ[name])]))
    for name, option in ENVIRONMENT_LISTS.items():
        endpoints = [e for e in re.split(r"[\s,]+", environ.get(name, "")) if e]
        if endpoints:
            given.append((name, option, ["%s=%s" % (option, e) for e in endpoints]))
    for name, (when_true, when_false) in ENVIRONMENT_SWITCHES.items():
        value = environ.get(name, "")
        if not value:
            continue
        if value.lower() not in _TRUE + _FALSE:
            raise ConfigError("%s=%s: expected 1/true/yes or 0/false/no" % (name, value))
        option = when_true if value.lower() in _TRUE else when_false
        if option:
            given.append((name, option, [option]))
    return given


def _seed(text: str) -> int:
    if text == "hostname":  # replicas without an ordinal (docker compose --scale) differ by host name only
        return zlib.crc32(socket.gethostname().encode())
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer from 0 to 2**64 - 1 or 'hostname', got %r"
                                         % text) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got %r" % text) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %s" % text)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, got %s" % text)
    return value


def _shard(text: str) -> Shard:
    index_text, sep, count_text = text.partition("/")
    if index_text == "hostname":
        host = socket.gethostname()
        index_text = host.rpartition("-")[2]
        if not index_text.isdigit():
            raise argparse.ArgumentTypeError("hostname %r does not end in -NUMBER: give the shard as I/N" % host)
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected I/N, e.g. 0/4, got %r" % text) from None
    if not sep or count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError("shard %s: need 0 <= I < N" % text)
    return Shard(index, count)


def _compress(text: str) -> Optional[Tuple[str, Optional[int]]]:
    name, sep, level = text.partition(":")
    if name == "off" and not sep:
        return None
    if name not in CODECS:
        raise argparse.ArgumentTypeError("expected off, %s or zstd:LEVEL, got %r" % (", ".join(CODECS), text))
    if not sep:
        return name, None
    if name != "zstd":
        raise argparse.ArgumentTypeError("only zstd takes a level (zstd:LEVEL), %s does not" % name)
    try:
        value = int(level)
    except ValueError:
        raise argparse.ArgumentTypeError("zstd level %r is not an integer" % level) from None
    if not MIN_ZSTD_LEVEL <= value <= MAX_ZSTD_LEVEL:
        raise argparse.ArgumentTypeError("zstd level %d: use %d (fastest) to %d (smallest)"
                                         % (value, MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL))
    return name, value


def _mean_values(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected numbers separated by commas, e.g. 104,117,123") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m server",
        description="zfeed data server: loads, transforms and batches samples "
                    "and pushes them to Caffe's ZmqDataLayer over ZeroMQ.")
    data = parser.add_argument_group("data")
    which = data.add_mutually_exclusive_group(required=True)
    which.add_argument("--source",
                       help="lmdb:PATH or leveldb:PATH (Caffe Datums), imagelist:LISTFILE (Caffe ImageData "
                            "list), folder:DIR (a sub-folder per class), hdf5:LISTFILE (Caffe HDF5Data list), "
                            "npz:PATH, or python:MODULE:FACTORY (your own dataset)")
    which.add_argument("--from-prototxt", default="", metavar="NET",
                       help="serve the Data/ImageData/HDF5Data layer that the Caffe net NET runs in --phase, "
                            "with its source, batch size and transform_param")
    data.add_argument("--root-folder", help="prefix of the paths in an image list (as Caffe's root_folder)")
    data.add_argument("--force-color", action="store_true", default=None, help="decode images as 3-channel BGR")
    data.add_argument("--force-gray", action="store_true", default=None, help="decode images as 1-channel gray")
    net = parser.add_argument_group("network")
    net.add_argument("--bind", action="append", default=[],
                     help="endpoint to bind the PUSH socket to (default %s when no --connect)" % DEFAULT_BIND)
    net.add_argument("--connect", action="append", default=[],
                     help="endpoint of a trainer whose layer binds; repeat for several trainers")
    net.add_argument("--stream-id", default="", help="name of this server in batch headers (default host:pid)")
    net.add_argument("--ready-file", default="", metavar="PATH",
                     help="write PATH (JSON: pid, endpoints) once serving and remove it on stopping: a "
                          "readiness signal for containers and scripts (default: none)")
    order = parser.add_argument_group("batches")
    order.add_argument("--batch-size", type=_positive_int, help="default %d" % DATA_DEFAULTS["batch_size"])
    order.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1,
                       help="loader worker processes (default: number of CPUs)")
    order.add_argument("--phase", choices=(TRAIN, TEST), default=TRAIN)
    order.add_argument("--shuffle", dest="shuffle", action="store_true", default=None,
                       help="shuffle every epoch (default in train)")
    order.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                       help="dataset order (default in test)")
    order.add_argument("--seed", type=_seed, default=0,
                       help="seed of the epoch orders, crops and flips, 0 to 2**64 - 1; 'hostname': a number "
                            "from the host name, so that replicas differ")
    order.add_argument("--epochs", type=_positive_int, default=None,
                       help="stop after this many epochs (default: serve forever)")
    order.add_argument("--max-inflight-mb", type=_number, default=512.0,
                       help="memory for batches being built or sent (default 512)")
    order.add_argument("--max-batches-per-message", type=_positive_int, default=DEFAULT_MAX_BATCHES_PER_MESSAGE,
                       help="small batches travel together, up to this many (default %d) in messages of about "
                            "8 MB: fewer, larger messages cost less per batch; 1: one batch per message, the "
                            "finest sharing between trainers and the least a trainer holds unread"
                            % DEFAULT_MAX_BATCHES_PER_MESSAGE)
    tf = parser.add_argument_group("transform_param (as Caffe)")
    tf.add_argument("--crop-size", type=_non_negative_int, help="default 0: no crop")
    tf.add_argument("--mirror", action="store_true", default=None)
    tf.add_argument("--mean-value", type=_mean_values, help="B,G,R or one value for all channels")
    tf.add_argument("--mean-file", help="mean.binaryproto of the full image size")
    tf.add_argument("--scale", type=_number, help="default 1")
    add_data_arguments(parser)
    parser.add_argument("--log-interval", type=_number, default=5.0, help="seconds between throughput lines")
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--shard", type=_shard, default=Shard(),
                       help="I/N: serve shard I (0-based) of N, every N-th sample of each epoch's order, "
                            "so that N servers with the same --seed cover each epoch once; I may be "
                            "'hostname' to take it from the hostname's last '-NUMBER' (a StatefulSet ordinal)")
    scale.add_argument("--metrics-port", type=int, default=0,
                       help="serve Prometheus metrics on this port (default: off)")
    scale.add_argument("--wire-format", choices=("auto", "float32"), default="auto",
                       help="auto (default): send cropped, mirrored uint8 pixels and let the trainer apply "
                            "mean and scale, bit-identical and a quarter of the bytes, wherever that is "
                            "exact (uint8 images, no mean file); float32: always send finished blobs")
    scale.add_argument("--compress", type=_compress, default=None, metavar="off|lz4|zstd[:LEVEL]",
                       help="compress batches for slow links (default: off). zstd (level %d by default) "
                            "shrinks real crops about 1.3x at about 1.5 GB/s per worker core: worth it where "
                            "the network, not the server, is the limit (1 Gbit/s links); the trainer "
                            "decompresses" % DEFAULT_ZSTD_LEVEL)
    security = parser.add_argument_group("security (CURVE: encryption and trainer authentication)")
    security.add_argument("--curve-secret-key", default="",
                          help="this server's .key_secret file (python -m server.tools.keygen)")
    security.add_argument("--allow-client-key", action="append", default=[],
                          help="public .key file of a trainer allowed to connect; repeatable")
    faults = parser.add_argument_group("faults")
    faults.add_argument("--on-bad-sample", choices=("skip", "fail"), default="skip",
                        help="skip: log an unreadable sample once, count it and fill the batch with the "
                             "next samples (default); fail: stop, naming the sample")
    faults.add_argument("--state-dir", default="",
                        help="directory where the server keeps its stream position, so that a "
                             "restarted server resumes its epoch instead of starting over")
    parser.epilog = ("Environment variables give options too (the command line wins): %s; %s (endpoints "
                     "separated by spaces or commas); %s (1/true/yes or 0/false/no)." % (
                         ", ".join("%s (%s)" % pair for pair in ENVIRONMENT.items()),
                         ", ".join("%s (%s)" % pair for pair in ENVIRONMENT_LISTS.items()),
                         ", ".join("%s (%s)" % (name, "/".join(filter(None, options))) for name, options in ENVIRONMENT_SWITCHES.items())))
    return parser
