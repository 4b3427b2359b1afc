"""Command-line options of the data server, validated once at start-up.

``parse_config(argv)`` returns a ``ServerConfig`` or raises ``ConfigError``
with a message that names the option and says what to change. ``prepare``
then opens the source and checks what needs the data (crop against the image
size, the mean file's shape) before anything is started.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from client_layer import wire
from server.caffe_proto import read_mean_binaryproto
from server.curve import CurveError, CurveServer
from server.plan import Shard
from server.data_options import (CLI_NAMES, DataOptionError, add_arguments as add_data_arguments,
                                 explicit_options, from_command_line, from_prototxt)
from server.sources import DEFAULT_DATASETS, SelectedArrays, SourceError, SourceOptions, open_source
from server.batch_layout import BatchLayout
from server.transform import TEST, TRAIN, TransformParams

DEFAULT_BIND = "tcp://*:5555"
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = -20, 22


class ConfigError(ValueError):
    """A configuration the server refuses; the message says what to change."""


@dataclass
class ServerConfig:
    source: str
    root_folder: str = ""
    bind: List[str] = field(default_factory=list)
    connect: List[str] = field(default_factory=list)
    batch_size: int = 64
    workers: int = 1
    phase: str = TRAIN
    shuffle: bool = True
    seed: int = 0
    epochs: Optional[int] = None
    crop_size: int = 0
    mirror: bool = False
    mean_values: Tuple[float, ...] = ()
    mean_file: str = ""
    scale: float = 1.0
    color: Optional[str] = None
    max_inflight_mb: float = 512.0
    log_interval_s: float = 5.0
    stream_id: str = ""
    on_bad_sample: str = "skip"
    state_dir: str = ""
    curve_secret_key: str = ""
    allow_client_keys: List[str] = field(default_factory=list)
    shard: Shard = Shard()
    metrics_port: int = 0
    wire_format: str = "auto"
    compress: Optional[Tuple[str, Optional[int]]] = None  # (codec, zstd level)
    # Data options beyond --source (server/data_options.py); names: how messages name each option.
    resize_hw: Tuple[int, int] = (0, 0)
    datasets: Tuple[str, ...] = DEFAULT_DATASETS
    arrays: Optional[Tuple[str, ...]] = None
    base_dir: str = ""
    names: Dict[str, str] = field(default_factory=lambda: dict(CLI_NAMES))
    layer: str = ""

    def codec(self) -> Optional[wire.Codec]:
        """The codec of ``--compress``, or None to send frames raw."""
        return wire.Codec(*self.compress) if self.compress else None


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
    if name not in wire.CODECS:
        raise argparse.ArgumentTypeError("expected off, %s or zstd:LEVEL, got %r" % (", ".join(wire.CODECS), text))
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
    parser = argparse.ArgumentParser(
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
    data.add_argument("--root-folder", default="", help="prefix of the paths in an image list (as Caffe's root_folder)")
    data.add_argument("--force-color", action="store_true", help="decode images as 3-channel BGR")
    data.add_argument("--force-gray", action="store_true", help="decode images as 1-channel gray")
    net = parser.add_argument_group("network")
    net.add_argument("--bind", action="append", default=[],
                     help="endpoint to bind the PUSH socket to (default %s when no --connect)" % DEFAULT_BIND)
    net.add_argument("--connect", action="append", default=[],
                     help="endpoint of a trainer whose layer binds; repeat for several trainers")
    net.add_argument("--stream-id", default="", help="name of this server in batch headers (default host:pid)")
    order = parser.add_argument_group("batches")
    order.add_argument("--batch-size", type=_positive_int, default=64)
    order.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1,
                       help="loader worker processes (default: number of CPUs)")
    order.add_argument("--phase", choices=(TRAIN, TEST), default=TRAIN)
    order.add_argument("--shuffle", dest="shuffle", action="store_true", default=None,
                       help="shuffle every epoch (default in train)")
    order.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                       help="dataset order (default in test)")
    order.add_argument("--seed", type=int, default=0, help="seed of the epoch orders, crops and flips")
    order.add_argument("--epochs", type=_positive_int, default=None,
                       help="stop after this many epochs (default: serve forever)")
    order.add_argument("--max-inflight-mb", type=float, default=512.0,
                       help="memory for batches being built or sent (default 512)")
    tf = parser.add_argument_group("transform_param (as Caffe)")
    tf.add_argument("--crop-size", type=_non_negative_int, default=0)
    tf.add_argument("--mirror", action="store_true")
    tf.add_argument("--mean-value", type=_mean_values, default=(), help="B,G,R or one value for all channels")
    tf.add_argument("--mean-file", default="", help="mean.binaryproto of the full image size")
    tf.add_argument("--scale", type=float, default=1.0)
    add_data_arguments(parser)
    parser.add_argument("--log-interval", type=float, default=5.0, help="seconds between throughput lines")
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--shard", type=_shard, default=Shard(),
                       help="I/N: serve shard I (0-based) of N, every N-th sample of each epoch's order, "
                            "so that N servers with the same --seed cover each epoch once; I may be "
                            "'hostname' to take it from the hostname's last '-NUMBER' (a StatefulSet ordinal)")
    scale.add_argument("--metrics-port", type=_non_negative_int, default=0,
                       help="serve Prometheus metrics on this port (default: off)")
    scale.add_argument("--wire-format", choices=("auto", "float32"), default="auto",
                       help="auto (default): send cropped, mirrored uint8 pixels and let the trainer apply "
                            "mean and scale, bit-identical and a quarter of the bytes, wherever that is "
                            "exact (uint8 images, no mean file); float32: always send finished blobs")
    scale.add_argument("--compress", type=_compress, default=None, metavar="off|lz4|zstd[:LEVEL]",
                       help="compress batches for slow links (default: off). zstd (level %d by default) "
                            "shrinks real crops about 1.3x at about 1.5 GB/s per worker core: worth it where "
                            "the network, not the server, is the limit (1 Gbit/s links); the trainer "
                            "decompresses" % wire.DEFAULT_ZSTD_LEVEL)
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
    return parser


def parse_config(argv: Optional[List[str]] = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    if args.mean_file and args.mean_value:
        raise ConfigError("--mean-file and --mean-value are both set; Caffe takes one or the other: drop one")
    if args.force_color and args.force_gray:
        raise ConfigError("--force-color and --force-gray are both set: choose one")
    for endpoint in args.bind + args.connect:
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise ConfigError("endpoint %r: expected tcp://HOST:PORT (or ipc://PATH)" % endpoint)
    if args.scale <= 0:
        raise ConfigError("--scale %s: must be positive" % args.scale)
    if args.max_inflight_mb <= 0:
        raise ConfigError("--max-inflight-mb must be positive")
    if args.allow_client_key and not args.curve_secret_key:
        raise ConfigError("--allow-client-key needs --curve-secret-key (the server's own key)")
    if args.curve_secret_key:
        try:
            CurveServer(args.curve_secret_key, args.allow_client_key)
        except CurveError as exc:
            raise ConfigError(str(exc)) from None
    if args.compress:
        try:
            wire.Codec(*args.compress)
        except wire.WireError as exc:
            raise ConfigError("--compress: %s" % exc) from None
    if args.state_dir and not os.path.isdir(args.state_dir):
        raise ConfigError("--state-dir %s is not a directory: create it or give another" % args.state_dir)
    bind = args.bind or ([] if args.connect else [DEFAULT_BIND])
    try:
        explicit = explicit_options(build_parser(), argv)
        data = from_prototxt(args, explicit) if args.from_prototxt else from_command_line(args, explicit)
    except DataOptionError as exc:
        raise ConfigError(str(exc)) from None
    default_shuffle = data.pop("default_shuffle")
    if default_shuffle is None:
        default_shuffle = args.phase == TRAIN
    return ServerConfig(
        bind=bind, connect=args.connect, workers=args.workers, phase=args.phase,
        shuffle=default_shuffle if args.shuffle is None else args.shuffle,
        seed=args.seed, epochs=args.epochs, **data,
        max_inflight_mb=args.max_inflight_mb, log_interval_s=args.log_interval,
        stream_id=args.stream_id or "%s:%d" % (socket.gethostname(), os.getpid()),
        on_bad_sample=args.on_bad_sample, state_dir=args.state_dir,
        curve_secret_key=args.curve_secret_key, allow_client_keys=args.allow_client_key,
        shard=args.shard, metrics_port=args.metrics_port, wire_format=args.wire_format,
        compress=args.compress,
    )


@dataclass
class PreparedData:
    """A source checked against the transform: what the workers will serve."""

    source: object
    layout: BatchLayout


def _mean_array(config: ServerConfig, image_shape: Tuple[int, int, int]) -> Optional[np.ndarray]:
    channels = image_shape[0]
    names = config.names
    if config.mean_file:
        try:
            mean = read_mean_binaryproto(config.mean_file)
        except (OSError, ValueError) as exc:
            raise ConfigError("%s %s: %s" % (names["mean_file"], config.mean_file, exc)) from None
        if mean.shape != image_shape:
            raise ConfigError("%s %s is %s (C x H x W) but the images are %s: "
                              "compute the mean over this data set (python -m server.tools.compute_image_mean)"
                              % (names["mean_file"], config.mean_file, "x".join(map(str, mean.shape)),
                                 "x".join(map(str, image_shape))))
        return mean.astype(np.float32)
    if config.mean_values:
        values = config.mean_values
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ConfigError("%s has %d values but the images have %d channels: "
                              "give one value or one per channel" % (names["mean_value"], len(values), channels))
        return np.asarray(values, dtype=np.float32).reshape(channels, 1, 1)
    return None


def _has_transform(config: ServerConfig) -> bool:
    return bool(config.crop_size or config.mirror or config.mean_file or config.mean_values
                or config.scale != 1.0)


def _open_checked_source(config: ServerConfig):
    """The source and its first sample; ConfigError naming the source option when unusable."""
    options = SourceOptions(root_folder=config.root_folder, color=config.color, resize_hw=config.resize_hw,
                            datasets=config.datasets, base_dir=config.base_dir)
    try:
        source = open_source(config.source, options)
        if config.arrays is not None:
            source = SelectedArrays(source, config.arrays)
        source.open()
        try:
            first = source.read(0)
        finally:
            source.close()
    except SourceError as exc:
        raise ConfigError("%s: %s" % (config.names["source"], exc)) from None
    except Exception as exc:
        raise ConfigError("%s %s: cannot read the first sample: %s"
                          % (config.names["source"], config.source, exc)) from None
    return source, first


def prepare(config: ServerConfig) -> PreparedData:
    """Open the source, read its first sample and check the transform against it."""
    source, first = _open_checked_source(config)
    image = first.get("data")
    if not (source.transformable and image is not None and np.ndim(image) == 3):
        if _has_transform(config):
            raise ConfigError("%s: the samples of %s have no C x H x W 'data' image to transform (they have %s)"
                              % (config.names["transform"], config.source,
                                 ", ".join("%s %s" % (k, np.shape(v)) for k, v in first.items())))
        return PreparedData(source, BatchLayout.from_sample(first, None))
    image_shape = tuple(int(d) for d in image.shape)
    channels, height, width = image_shape
    if config.crop_size > min(height, width):
        raise ConfigError("%s %d is larger than the %dx%d images of %s: "
                          "use a crop size of at most %d"
                          % (config.names["crop_size"], config.crop_size, height, width, config.source,
                             min(height, width)))
    params = TransformParams(phase=config.phase, crop_size=config.crop_size, mirror=config.mirror,
                             scale=config.scale, mean=_mean_array(config, image_shape))
    return PreparedData(source, BatchLayout.from_sample(first, params, pixels_on_wire=config.wire_format == "auto"))
