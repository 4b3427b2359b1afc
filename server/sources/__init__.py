"""Sample readers, one per source format.

Contract of a source: it is built in the supervisor (cheap: it lists what
there is, checks it, then closes every handle), forked into the loader
workers, and ``open()``ed in each worker after the fork, read-only.
``read(i)`` returns the i-th sample as a dict of arrays by name: for image
sources ``data`` (a C x H x W image, uint8 or float32, BGR) and ``label``;
for HDF5 one array per dataset. ``describe(i)`` names sample i for error
messages (its key, file or row). ``transformable`` says whether Caffe's
``transform_param`` may apply to ``data``. A source may define
``shuffled_order(rng)``, a shuffled pass over its samples with its format's
own order semantics (HDF5 keeps a file's rows together); otherwise a
shuffled pass is a uniform permutation. ``read_many(indices)`` reads what it
can of a whole batch at once (``base.Source`` states the contract); raw
Datums, HDF5 rows and npz arrays are read that way, encoded images and
users' datasets one by one.

Formats (``--source KIND:PATH``):

========== ============================================================
lmdb       Caffe Datums in an LMDB (``datum_db``)
leveldb    Caffe Datums in a LevelDB (``datum_db``)
imagelist  a Caffe ImageData list of image files (``image_files``)
folder     a folder with one sub-folder of images per class (``image_files``)
hdf5       a Caffe HDF5Data list of ``.h5`` files (``hdf5``)
npz        ``data`` and ``label`` arrays in an ``.npz`` file (``arrays``)
python     a user's dataset, ``python:MODULE:FACTORY`` (``arrays``)
========== ============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from server.decode import COLOR_BGR, COLOR_NATIVE
from server.sources.arrays import NpzSource, PythonSource
from server.sources.base import BlockRead, Sample, SampleBlock, SelectedArrays, Source, SourceError, image_sample
from server.sources.datum_db import LevelDbSource, LmdbSource, datum_image, datum_sample
from server.sources.hdf5 import Hdf5Source, read_hdf5_list
from server.sources.image_files import (ImageFilesSource, image_folder_source, image_list_source,
                                        read_image_list, scan_class_folder)

SOURCE_KINDS = ("lmdb", "leveldb", "imagelist", "folder", "hdf5", "npz", "python")
DEFAULT_DATASETS = ("data", "label")

__all__ = [
    "DEFAULT_DATASETS", "Hdf5Source", "ImageFilesSource", "LevelDbSource", "LmdbSource", "NpzSource",
    "BlockRead", "PythonSource", "SOURCE_KINDS", "Sample", "SampleBlock", "SelectedArrays", "Source",
    "SourceError", "SourceOptions",
    "datum_image", "datum_sample", "image_folder_source", "image_list_source", "image_sample",
    "open_source", "read_hdf5_list", "read_image_list", "scan_class_folder",
]


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source, beyond its path.

    ``color``: ``decode.COLOR_*`` or None for the format's default (encoded
    Datums: the file's own channels; image files: BGR). ``resize_hw``: image
    files' (new_height, new_width), (0, 0) to keep the size. ``datasets``:
    the HDF5 datasets to serve. ``base_dir``: what relative paths inside
    list files are relative to ('' for the current directory).
    """

    root_folder: str = ""
    color: Optional[str] = None
    resize_hw: Tuple[int, int] = (0, 0)
    datasets: Sequence[str] = DEFAULT_DATASETS
    base_dir: str = ""


def open_source(spec: str, options: SourceOptions = SourceOptions()):
    """Build the source ``KIND:PATH`` names (see ``SOURCE_KINDS``). Raises SourceError, whose
    message says what is wrong and leaves naming the option (or prototxt field) to the caller."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not path:
        raise SourceError("expected KIND:PATH with KIND one of %s, e.g. lmdb:/data/train_lmdb; got %r"
                          % (", ".join(SOURCE_KINDS), spec))
    if kind == "lmdb":
        return LmdbSource(path, options.color or COLOR_NATIVE)
    if kind == "leveldb":
        return LevelDbSource(path, options.color or COLOR_NATIVE)
    if kind == "imagelist":
        return image_list_source(path, options.root_folder, options.color or COLOR_BGR,
                                 options.resize_hw, options.base_dir)
    if kind == "folder":
        return image_folder_source(path, options.color or COLOR_BGR, options.resize_hw)
    if kind == "hdf5":
        return Hdf5Source(path, options.datasets, options.base_dir)
    if kind == "python":
        return PythonSource(path)
    return NpzSource(path)
