"""Settings of the data server, validated once at start-up.

``parse_config(argv, environ)`` reads the options (``server.options``: the
command line after the ``ZFEED_*`` environment variables) and checks every
value that can be checked without the data; it returns a ``ServerConfig`` or
raises ``ConfigError`` with a message that names the option (or the prototxt
field) and says what to change. ``prepare`` then opens the source and checks
what needs the data: the crop against the image size, the mean file's
shape, the shard against the dataset, and that a batch can be delivered at
all (its header within the trainer's limit, each sample within one frame,
two batch slots within ``--max-inflight-mb``). ``python -m server`` exits
with status 2 on ConfigError.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass, fields
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from client_layer import wire
from client_layer.compression import Codec
from client_layer.curve_keys import CurveKeyError
from server.batch_buffer import slot_bytes_for
from server.batch_layout import BatchLayout
from server.caffe_proto import read_mean_binaryproto
from server.curve import CurveServer
from server.data_options import DataOptionError, DataSpec, data_spec
from server.endpoints import MAX_PORT, endpoint_problem
from server.options import DEFAULT_BIND, SEED_LIMIT, ConfigError, build_parser, environment_arguments
from server.plan import Shard
from server.sender import new_server_id
from server.sources import SelectedArrays, SourceError, SourceOptions, open_source
from server.transform import TRAIN, TransformParams

_LARGEST_SEQ = 2**63 - 1  # the longest sequence number a header can carry


@dataclass(frozen=True)
class ServerConfig(DataSpec):
    """Every setting of a server, checked: what to serve (the fields of ``DataSpec``) and how."""

    shuffle: bool  # decided: --shuffle/--no-shuffle, else the layer's, else in TRAIN only
    bind: List[str]
    connect: List[str]
    workers: int
    phase: str
    seed: int
    epochs: Optional[int]
    max_inflight_mb: float
    max_batches_per_message: int
    log_interval_s: float
    stream_id: str
    on_bad_sample: str
    state_dir: str
    curve_secret_key: str
    allow_client_keys: List[str]
    shard: Shard
    metrics_port: int
    wire_format: str
    compress: Optional[Tuple[str, Optional[int]]]  # (codec, zstd level)
    ready_file: str  # "": none (server/ready_file.py)

    def codec(self) -> Optional[Codec]:
        """The codec of ``--compress``, or None to send frames raw."""
        return Codec(*self.compress) if self.compress else None


def parse_config(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> ServerConfig:
    """The settings ``argv`` (default: the command line) and ``environ``'s ``ZFEED_*`` variables
    (default: the process environment) give, every value checked; ConfigError otherwise."""
    from_environment = environment_arguments(os.environ if environ is None else environ)
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        return _config_of([part for _, _, arguments in from_environment for part in arguments] + given)
    except ConfigError as exc:
        origins = ["%s sets %s" % (name, option) for name, option, _ in from_environment if option in str(exc)]
        raise ConfigError("%s%s" % (exc, " (%s)" % ", ".join(origins) if origins else "")) from None


def _config_of(argv: List[str]) -> ServerConfig:
    args = build_parser().parse_args(argv)
    if args.mean_file and args.mean_value:
        raise ConfigError("--mean-file and --mean-value are both set; Caffe takes one or the other: drop one")
    if args.force_color and args.force_gray:
        raise ConfigError("--force-color and --force-gray are both set: choose one")
    if args.allow_client_key and not args.curve_secret_key:
        raise ConfigError("--allow-client-key needs --curve-secret-key (the server's own key)")
    if args.curve_secret_key and not args.allow_client_key:
        raise ConfigError("--curve-secret-key needs at least one --allow-client-key (a trainer's public key file)")
    if args.curve_secret_key:
        try:
            CurveServer(args.curve_secret_key, args.allow_client_key)
        except CurveKeyError as exc:
            raise ConfigError(str(exc)) from None
    if args.compress:
        try:
            Codec(*args.compress)
        except wire.WireError as exc:
            raise ConfigError("--compress: %s" % exc) from None
    if args.state_dir and not os.path.isdir(args.state_dir):
        raise ConfigError("--state-dir %s is not a directory: create it or give another" % args.state_dir)
    if args.ready_file:
        _check_ready_file(args.ready_file)
    # The same endpoint twice (say from ZFEED_BIND and --bind) is one endpoint.
    bind = list(dict.fromkeys(args.bind)) or ([] if args.connect else [DEFAULT_BIND])
    connect = list(dict.fromkeys(args.connect))
    try:
        data = data_spec(args)
    except DataOptionError as exc:
        raise ConfigError(str(exc)) from None
    shuffle = args.shuffle
    if shuffle is None:
        shuffle = data.shuffle if data.shuffle is not None else args.phase == TRAIN
    config = ServerConfig(
        **{**{f.name: getattr(data, f.name) for f in fields(DataSpec)}, "shuffle": shuffle},
        bind=bind, connect=connect, workers=args.workers, phase=args.phase,
        seed=args.seed, epochs=args.epochs,
        max_inflight_mb=args.max_inflight_mb, max_batches_per_message=args.max_batches_per_message,
        log_interval_s=args.log_interval,
        stream_id=args.stream_id or "%s:%d" % (socket.gethostname(), os.getpid()),
        on_bad_sample=args.on_bad_sample, state_dir=args.state_dir,
        curve_secret_key=args.curve_secret_key, allow_client_keys=args.allow_client_key,
        shard=args.shard, metrics_port=args.metrics_port, wire_format=args.wire_format,
        compress=args.compress, ready_file=args.ready_file,
    )
    _check_values(config)
    return config


def _check_values(config: ServerConfig) -> None:
    """The ranges of the numbers and endpoints, wherever they came from (options or a prototxt)."""
    names = config.names
    if not 0 <= config.seed < SEED_LIMIT:
        raise ConfigError("--seed %d: use a seed from 0 to 2**64 - 1" % config.seed)
    if not (math.isfinite(config.max_inflight_mb) and config.max_inflight_mb > 0):
        raise ConfigError("--max-inflight-mb %s: give a positive number of megabytes" % config.max_inflight_mb)
    if not (math.isfinite(config.log_interval_s) and config.log_interval_s > 0):
        raise ConfigError("--log-interval %s: give a positive number of seconds" % config.log_interval_s)
    if not 0 <= config.metrics_port <= MAX_PORT:
        raise ConfigError("--metrics-port %d: use a port from 1 to %d (or 0: no metrics)"
                          % (config.metrics_port, MAX_PORT))
    if not (math.isfinite(config.scale) and config.scale > 0):
        raise ConfigError("%s %s: must be a positive number" % (names["scale"], config.scale))
    if not all(math.isfinite(value) for value in config.mean_values):
        raise ConfigError("%s %s: every value must be a finite number"
                          % (names["mean_value"], ",".join(map(str, config.mean_values))))
    try:
        config.stream_id.encode("utf-8")
    except UnicodeError:
        raise ConfigError("--stream-id %r: not UTF-8 text" % config.stream_id) from None
    for option, endpoints in (("--bind", config.bind), ("--connect", config.connect)):
        for endpoint in endpoints:
            _check_endpoint(option, endpoint)


def _check_ready_file(path: str) -> None:
    if os.path.isdir(path):
        raise ConfigError("--ready-file %s: is a directory; give a file path in it" % path)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConfigError("--ready-file %s: its directory %s does not exist: create it or give another"
                          % (path, folder))


def _check_endpoint(option: str, endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    if problem:
        raise ConfigError("%s %s: %s" % (option, endpoint, problem))


@dataclass
class PreparedData:
    """A source checked against the transform: what the workers will serve, and how a batch
    of it travels (``specs``: one per array, checked to be deliverable)."""

    source: object
    layout: BatchLayout
    specs: List[wire.ArraySpec]


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


def _layout(config: ServerConfig, first: dict, params: Optional[TransformParams]) -> BatchLayout:
    """The batch layout of samples like ``first``; ConfigError if no trainer could receive them."""
    try:
        return BatchLayout.from_sample(first, params, pixels_on_wire=config.wire_format == "auto")
    except wire.WireError as exc:
        raise ConfigError("%s %s: %s, so no trainer could receive it: make the samples smaller "
                          "(--crop-size, --new-height/--new-width)" % (config.names["source"], config.source, exc)) from None


def _header(config: ServerConfig, layout: BatchLayout, batch_size: int) -> Tuple[bytes, List[wire.ArraySpec]]:
    """The longest header a batch of ``batch_size`` can have, and the batch's specs."""
    specs = layout.batch_specs(batch_size)
    origin = wire.StreamOrigin(new_server_id(), config.shard.index, config.shard.count, config.seed, 2**63 - 1)
    return wire.encode_header(config.stream_id, _LARGEST_SEQ, specs, np.zeros(batch_size, np.int64),
                              np.zeros(batch_size, np.int32), layout.wire_extra(),
                              config.compress[0] if config.compress else None, origin=origin), specs


def _header_refusal(config: ServerConfig, layout: BatchLayout, batch_size: int) -> Optional[str]:
    """Why the trainer's layer would refuse the header of a batch of ``batch_size`` (None: it would not)."""
    header, specs = _header(config, layout, batch_size)
    try:
        wire.decode_header(memoryview(header), sum(s.nbytes for s in specs))
    except wire.WireError as exc:
        return str(exc)
    return None


def _check_header(config: ServerConfig, layout: BatchLayout) -> None:
    """A header the trainer's layer refuses (over its size limit, say) would make it drop every batch."""
    problem = _header_refusal(config, layout, 1)
    if problem:
        raise ConfigError("the trainer's layer would refuse every batch header (%s): shorten --stream-id" % problem)
    one, two = (len(_header(config, layout, n)[0]) for n in (1, 2))
    per_sample = two - one
    # No larger batch can fit, whatever msgpack's length fields add: search below it only.
    too_big = min(config.batch_size, 2 + (wire.MAX_HEADER_BYTES - one) // per_sample)
    if too_big == config.batch_size and _header_refusal(config, layout, too_big) is None:
        return
    fits = 1
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        if _header_refusal(config, layout, middle) is None:
            fits = middle
        else:
            too_big = middle
    raise ConfigError("%s %d: a batch header would be over the %d bytes a trainer accepts (it lists every "
                      "sample), so every batch would be dropped: use a batch size of at most %d"
                      % (config.names["batch_size"], config.batch_size, wire.MAX_HEADER_BYTES, fits))


def _check_memory(config: ServerConfig, specs: List[wire.ArraySpec]) -> None:
    """``--max-inflight-mb`` must hold the slots the supervisor allocates (server/supervisor.py)."""
    # Imported here: server.supervisor imports this module.
    from server.sizing import slot_count_for
    slot_bytes = slot_bytes_for(specs, packed=config.compress is not None)
    slots = slot_count_for(slot_bytes, config.workers, config.max_inflight_mb)
    if slots * slot_bytes > config.max_inflight_mb * 2**20:
        minimum_mb = math.ceil(slots * slot_bytes / 2**20 * 1000) / 1000
        raise ConfigError("--max-inflight-mb %s is less than %d batch slots of %.3f MB, the fewest a server "
                          "runs with: give at least %.3f, or a smaller --batch-size"
                          % (config.max_inflight_mb, slots, slot_bytes / 2**20, minimum_mb))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if slots * slot_bytes > memory:
        raise ConfigError("%s %d: its %d batch slots of %.0f MB would need more than this machine's %.0f MB of "
                          "memory: use a smaller batch size (or --max-inflight-mb)"
                          % (config.names["batch_size"], config.batch_size, slots, slot_bytes / 2**20,
                             memory / 2**20))


def _check_shard(config: ServerConfig, dataset_size: int) -> None:
    shard = config.shard
    if shard.size_of(dataset_size) < 1:
        raise ConfigError("--shard %d/%d of %d samples is empty: use at most %d shards"
                          % (shard.index, shard.count, dataset_size, dataset_size))


def _deliverable(config: ServerConfig, source, layout: BatchLayout) -> PreparedData:
    """``source`` and ``layout`` with their wire specs, once batches of them are known to be deliverable."""
    _check_shard(config, len(source))
    specs = layout.batch_specs(config.batch_size)
    _check_header(config, layout)
    _check_memory(config, specs)
    return PreparedData(source, layout, specs)


def prepare(config: ServerConfig) -> PreparedData:
    """Open the source, read its first sample and check the transform and the batches against it."""
    source, first = _open_checked_source(config)
    image = first.get("data")
    if not (source.transformable and image is not None and np.ndim(image) == 3):
        if _has_transform(config):
            raise ConfigError("%s: the samples of %s have no C x H x W 'data' image to transform (they have %s)"
                              % (config.names["transform"], config.source,
                                 ", ".join("%s %s" % (k, np.shape(v)) for k, v in first.items())))
        return _deliverable(config, source, _layout(config, first, None))
    image_shape = tuple(int(d) for d in image.shape)
    channels, height, width = image_shape
    if config.crop_size > min(height, width):
        raise ConfigError("%s %d is larger than the %dx%d images of %s: "
                          "use a crop size of at most %d"
                          % (config.names["crop_size"], config.crop_size, height, width, config.source,
                             min(height, width)))
    params = TransformParams(phase=config.phase, crop_size=config.crop_size, mirror=config.mirror,
                             scale=config.scale, mean=_mean_array(config, image_shape))
    return _deliverable(config, source, _layout(config, first, params))
