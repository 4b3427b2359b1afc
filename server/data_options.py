"""What the server serves and how it transforms it: from options, or from a prototxt's data layer.

``--source KIND:PATH`` and the transform options describe the data on the
command line. ``--from-prototxt NET --phase PHASE`` instead takes all of it
from the Data, ImageData or HDF5Data layer that ``NET`` runs in ``PHASE``
(``server.prototxt``), so that zfeed serves exactly what Caffe's layer
would:

============== ===============================================================
layer          served as
============== ===============================================================
Data           ``lmdb:``/``leveldb:`` (``backend``, LevelDB by default as in
               Caffe) of ``source``; transform_param's ``force_color`` and
               ``force_gray`` decode encoded Datums; ``force_encoded_color``
               is ignored and logged, as BVLC Caffe ignores it since 2015
ImageData      ``imagelist:`` of ``source`` with ``root_folder``,
               ``new_height``/``new_width`` and ``is_color``; ``shuffle``
HDF5Data       ``hdf5:`` of ``source``, one array per top, named by it;
               ``shuffle``; a transform_param is refused, as Caffe does
============== ===============================================================

All layers: ``batch_size``, every transform_param field, and the tops
(``data`` and ``label`` for the image layers, in the order the layer names
them; a Data layer with one top gets no label). ``--batch-size`` may
override the layer's batch size (the ZmqDataLayer takes its shapes from the
stream). Relative paths are relative
to ``--working-dir`` (default: the current directory), i.e. where Caffe
runs, as Caffe resolves them. ``rand_skip`` and ``prefetch`` are ignored
(zfeed's order comes from ``--seed``; prefetching is ZeroMQ's), and so are
the deprecated transform fields of data_param/image_data_param, which
Caffe ignores too; each is logged. Options the layer sets cannot be given
again on the command line: the layer is the one place that says them.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence, Set, Tuple

from server.decode import COLOR_BGR, COLOR_GRAY
from server.prototxt import DataLayer, PrototxtError, select_data_layer
from server.sources import DEFAULT_DATASETS

log = logging.getLogger("zfeed.server")


class DataOptionError(ValueError):
    """Data options the server refuses; the message names the option or layer field."""


# Option dest -> how messages name it, on the command line.
CLI_NAMES = {
    "source": "--source", "root_folder": "--root-folder", "batch_size": "--batch-size",
    "crop_size": "--crop-size", "mirror": "--mirror", "mean_file": "--mean-file",
    "mean_value": "--mean-value", "scale": "--scale", "force_color": "--force-color",
    "force_gray": "--force-gray", "new_size": "--new-height/--new-width", "datasets": "--datasets",
    "transform": "--crop-size/--mirror/--mean-file/--mean-value/--scale",
}
# What a data layer says instead of these options: they cannot be given with --from-prototxt.
LAYER_OWNED = ("source", "root_folder", "crop_size", "mirror", "mean_file",
               "mean_value", "scale", "force_color", "force_gray", "new_height", "new_width",
               "datasets")
TRANSFORM_OPTIONS = ("crop_size", "mirror", "mean_file", "mean_value", "scale")
_IMAGE_FILE_KINDS = ("imagelist", "folder")
# The data options' values when not given. The parser leaves them None, so that a given
# option can be told from a default one (options a prototxt layer owns cannot be given).
DEFAULTS = {
    "root_folder": "", "batch_size": 64, "crop_size": 0, "mirror": False, "mean_file": "", "mean_value": (),
    "scale": 1.0, "force_color": False, "force_gray": False, "new_height": 0, "new_width": 0,
    "datasets": ",".join(DEFAULT_DATASETS), "layer": "", "stage": (), "level": None, "working_dir": "",
}


@dataclass(frozen=True)
class DataSpec:
    """What to serve and how to transform it, from ``--source`` and its options or from a layer."""

    source: str  # KIND:PATH
    batch_size: int
    root_folder: str
    crop_size: int
    mirror: bool
    mean_values: Tuple[float, ...]
    mean_file: str
    scale: float
    color: Optional[str]  # decode.COLOR_*, None: as stored
    resize_hw: Tuple[int, int]  # (0, 0): no resize
    datasets: Tuple[str, ...]  # HDF5 datasets to serve
    arrays: Optional[Tuple[str, ...]]  # the arrays of each sample to serve (None: all)
    shuffle: Optional[bool]  # the layer's shuffle; None: the phase decides
    names: Mapping[str, str]  # how messages name each field (option or prototxt field)
    layer: str  # where the layer is, or "" for --source
    base_dir: str  # what relative paths are relative to ("": the current directory)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a prototxt layer (``--from-prototxt`` itself is beside ``--source``),
    and those of image-file and HDF5 sources."""
    data = parser.add_argument_group("with --from-prototxt")
    data.add_argument("--layer", help="the data layer's name, when NET has several for the phase")
    data.add_argument("--stage", action="append",
                      help="a stage of the net state (as the solver's train_state/test_state); repeatable")
    data.add_argument("--level", type=int, help="the level of the net state")
    data.add_argument("--working-dir",
                      help="where Caffe runs: what the prototxt's relative paths are relative to "
                           "(default: the current directory)")
    images = parser.add_argument_group("image files, HDF5 (as Caffe's ImageData, HDF5Data)")
    images.add_argument("--new-height", type=int, help="resize images to this height (with --new-width)")
    images.add_argument("--new-width", type=int, help="resize images to this width (with --new-height)")
    images.add_argument("--datasets",
                        help="HDF5 datasets to serve, in top order (default: %s)" % DEFAULTS["datasets"])


def data_spec(args: argparse.Namespace) -> DataSpec:
    """What ``args`` (the parsed options) says to serve: the layer of ``--from-prototxt``, or
    ``--source`` with the options that go with it. DataOptionError names what is wrong."""
    given = {dest for dest in DEFAULTS if getattr(args, dest) is not None}
    values = argparse.Namespace(**{**vars(args), **{dest: DEFAULTS[dest] for dest in DEFAULTS if dest not in given}})
    return from_prototxt(values, given) if args.from_prototxt else from_command_line(values, given)


def _resolve(base_dir: str, path: str) -> str:
    return os.path.join(base_dir, path) if path and not os.path.isabs(path) else path


def _check_size_pair(height: int, width: int, name: str) -> None:
    if height < 0 or width < 0 or bool(height) != bool(width):
        raise DataOptionError("%s: give both a height and a width, or neither (Caffe resizes "
                              "only when both are set), got %d x %d" % (name, height, width))


def from_command_line(args: argparse.Namespace, explicit: Set[str]) -> DataSpec:
    """``--source`` and the options that go with it; ``explicit``: the options given."""
    for dest in ("layer", "stage", "level", "working_dir"):
        if dest in explicit:
            raise DataOptionError("--%s applies only with --from-prototxt" % dest.replace("_", "-"))
    kind = args.source.partition(":")[0]
    _check_size_pair(args.new_height, args.new_width, CLI_NAMES["new_size"])
    if (args.new_height or args.new_width) and kind not in _IMAGE_FILE_KINDS:
        raise DataOptionError("--new-height/--new-width apply to imagelist: and folder: sources only")
    datasets = tuple(name for name in args.datasets.split(",") if name)
    if "datasets" in explicit and kind != "hdf5":
        raise DataOptionError("--datasets applies to hdf5: sources only")
    if kind == "hdf5":
        given = [CLI_NAMES[dest] for dest in TRANSFORM_OPTIONS + ("force_color", "force_gray")
                 if dest in explicit]
        if given:
            raise DataOptionError("%s: an HDF5 source is served as stored, with no transform "
                                  "(Caffe's HDF5Data layer refuses transform_param too)" % ", ".join(given))
        if not datasets:
            raise DataOptionError("--datasets: name at least one HDF5 dataset, e.g. data,label")
    color = COLOR_BGR if args.force_color else COLOR_GRAY if args.force_gray else None
    return DataSpec(source=args.source, root_folder=args.root_folder, batch_size=args.batch_size,
                    crop_size=args.crop_size, mirror=args.mirror, mean_values=args.mean_value,
                    mean_file=args.mean_file, scale=args.scale, color=color,
                    resize_hw=(args.new_height, args.new_width),
                    datasets=datasets if kind == "hdf5" else DEFAULT_DATASETS,
                    arrays=None, shuffle=None, names=CLI_NAMES, layer="", base_dir="")


def _layer_names(layer: DataLayer, param: str) -> Mapping[str, str]:
    where = layer.where()
    names = {key: "%s: transform_param.%s" % (where, key) for key in TRANSFORM_OPTIONS}
    names.update(source="%s: %s.source" % (where, param), batch_size="%s: %s.batch_size" % (where, param),
                 root_folder="%s: %s.root_folder" % (where, param),
                 force_color="%s: transform_param.force_color" % where,
                 force_gray="%s: transform_param.force_gray" % where,
                 new_size="%s: %s.new_height/new_width" % (where, param),
                 datasets="%s: top" % where, transform="%s: transform_param" % where)
    return names


def _warn_ignored(layer: DataLayer, message, param: str) -> None:
    where = layer.where()
    for field in ("rand_skip", "prefetch"):
        if message.DESCRIPTOR.fields_by_name.get(field) and message.HasField(field):
            log.warning("%s: %s.%s is ignored: zfeed's order comes from --seed and ZeroMQ prefetches",
                        where, param, field)
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if message.DESCRIPTOR.fields_by_name.get(field) and message.HasField(field):
            log.warning("%s: %s.%s is deprecated and ignored, by Caffe too: move it to transform_param",
                        where, param, field)


def _image_tops(layer: DataLayer) -> Sequence[str]:
    if not 1 <= len(layer.tops) <= 2:
        raise DataOptionError("%s has %d tops; a %s layer has data and optionally label"
                              % (layer.where(), len(layer.tops), layer.type))
    return DEFAULT_DATASETS[:len(layer.tops)]


def from_layer(layer: DataLayer, base_dir: str) -> DataSpec:
    """What serves ``layer`` as Caffe would (see the module docstring)."""
    param_name = {"Data": "data_param", "ImageData": "image_data_param",
                  "HDF5Data": "hdf5_data_param"}[layer.type]
    if not layer.param.HasField(param_name):
        raise DataOptionError("%s has no %s: it needs at least a source and a batch size"
                              % (layer.where(), param_name))
    param = getattr(layer.param, param_name)
    names = _layer_names(layer, param_name)
    if param.source and not os.path.isabs(param.source):
        names["source"] += " (relative to %s)" % base_dir
    if not param.source:
        raise DataOptionError("%s is not set" % names["source"])
    if param.batch_size < 1:
        raise DataOptionError("%s must be at least 1, it is %d" % (names["batch_size"], param.batch_size))
    _warn_ignored(layer, param, param_name)
    transform = layer.param.transform_param
    if transform.force_color and transform.force_gray:
        raise DataOptionError("%s: force_color and force_gray are both set; Caffe takes one or the other"
                              % layer.where())
    if transform.mean_file and len(transform.mean_value):
        raise DataOptionError("%s: transform_param has both mean_file and mean_value; Caffe takes one "
                              "or the other: drop one" % layer.where())
    fields = dict(batch_size=int(param.batch_size), crop_size=int(transform.crop_size),
                  mirror=bool(transform.mirror), mean_values=tuple(transform.mean_value),
                  mean_file=_resolve(base_dir, transform.mean_file), scale=float(transform.scale),
                  root_folder="", color=None, resize_hw=(0, 0), datasets=DEFAULT_DATASETS,
                  shuffle=False, names=names, layer=layer.where())
    source = _resolve(base_dir, param.source)
    if layer.type == "Data":
        kind = "lmdb" if param.backend == param.LMDB else "leveldb"
        if param.force_encoded_color:
            log.warning("%s: data_param.force_encoded_color is ignored, by Caffe too: "
                        "use transform_param.force_color", layer.where())
        fields.update(source="%s:%s" % (kind, source), arrays=_image_tops(layer),
                      color=COLOR_BGR if transform.force_color else COLOR_GRAY if transform.force_gray else None)
    elif layer.type == "ImageData":
        _check_size_pair(param.new_height, param.new_width, names["new_size"])
        if transform.force_color or transform.force_gray:
            log.warning("%s: transform_param.force_color/force_gray are ignored for ImageData, by Caffe "
                        "too (they apply to encoded Datums): image_data_param.is_color decides",
                        layer.where())
        fields.update(source="imagelist:%s" % source, arrays=_image_tops(layer),
                      root_folder=param.root_folder, color=COLOR_BGR if param.is_color else COLOR_GRAY,
                      resize_hw=(int(param.new_height), int(param.new_width)),
                      shuffle=bool(param.shuffle))
    else:
        if layer.param.HasField("transform_param"):
            raise DataOptionError("%s has a transform_param; HDF5 data is served as stored "
                                  "(Caffe's HDF5Data layer refuses transform_param too): remove it"
                                  % layer.where())
        if not layer.tops:
            raise DataOptionError("%s has no tops: name the HDF5 datasets to serve as its tops" % layer.where())
        fields.update(source="hdf5:%s" % source, arrays=None, datasets=layer.tops,
                      shuffle=bool(param.shuffle))
    return DataSpec(base_dir=base_dir, **fields)


def from_prototxt(args: argparse.Namespace, explicit: Set[str]) -> DataSpec:
    """The layer of ``--from-prototxt``, checked against the options given (``explicit``)."""
    given = ["--" + dest.replace("_", "-") for dest in LAYER_OWNED if dest in explicit]
    if given:
        raise DataOptionError("%s: with --from-prototxt the data layer sets these; edit the prototxt, "
                              "or serve with --source instead" % ", ".join(given))
    base_dir = args.working_dir or os.getcwd()
    if not os.path.isdir(base_dir):
        raise DataOptionError("--working-dir %s is not a directory" % base_dir)
    try:
        layer = select_data_layer(args.from_prototxt, args.phase, args.layer, args.level, args.stage)
    except PrototxtError as exc:
        raise DataOptionError("--from-prototxt: %s" % exc) from None
    spec = from_layer(layer, base_dir)
    log.info("using %s for phase %s", layer.where(), args.phase.upper())
    if "batch_size" in explicit:
        log.info("--batch-size %d instead of the layer's %d", args.batch_size, spec.batch_size)
        spec = replace(spec, batch_size=args.batch_size)
    return spec
