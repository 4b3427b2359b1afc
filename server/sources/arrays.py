"""Samples that are arrays already: an ``.npz`` file, or a user's own Python dataset."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from typing import Optional, Tuple

import numpy as np

from server.sources.base import BlockRead, Sample, SampleBlock, Source, SourceError, image_sample


class NpzSource(Source):
    """``data`` (N x C x H x W, uint8 or float32) and ``label`` (N) arrays in an .npz file."""

    def __init__(self, path: str):
        self.path = path
        data, labels = self._load()
        if data.ndim != 4 or data.dtype not in (np.uint8, np.float32):
            raise SourceError("%s: 'data' must be N x C x H x W uint8 or float32, it is %s %s"
                              % (path, data.dtype, data.shape))
        if labels.shape != (len(data),):
            raise SourceError("%s: 'label' has shape %s, expected (%d,)" % (path, labels.shape, len(data)))
        self._data: Optional[np.ndarray] = None
        self._labels: Optional[np.ndarray] = None
        self._length = len(data)

    def _load(self) -> Tuple[np.ndarray, np.ndarray]:
        try:
            archive = np.load(self.path, allow_pickle=False, mmap_mode="r")
            return archive["data"], archive["label"]
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError("cannot read arrays 'data' and 'label' from %s: %s" % (self.path, exc)) from None

    def __len__(self) -> int:
        return self._length

    def open(self) -> None:
        self._data, labels = self._load()
        self._labels = np.asarray(labels, np.float32)  # as Caffe's blob holds them, once

    def close(self) -> None:
        self._data = self._labels = None

    def describe(self, index: int) -> str:
        return "%s sample %d" % (self.path, index)

    def read(self, index: int) -> Sample:
        return image_sample(self._data[index], self._labels[index])

    def read_many(self, indices: np.ndarray) -> BlockRead:
        block = SampleBlock(np.arange(len(indices)), {"data": self._data, "label": self._labels}, rows=indices)
        return [block], np.zeros(0, np.int64)


def _load_module(name: str):
    if name.endswith(".py"):
        if not os.path.isfile(name):
            raise SourceError("python:%s: no such file" % name)
        spec = importlib.util.spec_from_file_location(
            "zfeed_user_dataset_" + os.path.splitext(os.path.basename(name))[0], name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


class PythonSource(Source):
    """A user's dataset: ``MODULE:FACTORY`` (MODULE a module name or a ``.py`` file).

    ``FACTORY()`` is called once, in the server before the loader processes
    are forked, and must return an object with ``__len__`` and
    ``__getitem__(i)`` giving a dict of numeric arrays (or numbers) by name,
    every item the same names and shapes. A ``data`` array (C x H x W) goes
    through ``transform_param`` like an image; the others are served as they
    are, as float32. The loader processes inherit the object through fork:
    open files or connections lazily in ``__getitem__``, not in FACTORY, if
    they must not be shared between processes.
    """

    def __init__(self, spec: str):
        module_name, _, factory_name = spec.rpartition(":")
        if not module_name or not factory_name:
            raise SourceError("python:%s: expected python:MODULE:FACTORY (or python:FILE.py:FACTORY)" % spec)
        self.spec = spec
        try:
            factory = _load_module(module_name)
            for attribute in factory_name.split("."):
                factory = getattr(factory, attribute)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError("python:%s: cannot load %s from %s: %s: %s"
                              % (spec, factory_name, module_name, type(exc).__name__, exc)) from None
        try:
            self.dataset = factory()
            length = len(self.dataset)
        except Exception as exc:
            raise SourceError("python:%s: %s() failed or returned an object without __len__: %s: %s"
                              % (spec, factory_name, type(exc).__name__, exc)) from None
        if length < 1:
            raise SourceError("python:%s: the dataset is empty" % spec)
        self._length = int(length)

    def __len__(self) -> int:
        return self._length

    def describe(self, index: int) -> str:
        return "python:%s item %d" % (self.spec, index)

    def read(self, index: int) -> Sample:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise ValueError("item is a %s, expected a dict of arrays by name" % type(item).__name__)
        sample = {}
        for name, value in item.items():
            array = np.asarray(value)
            if not isinstance(name, str) or array.dtype.kind not in "biuf":
                raise ValueError("item %r is %s; items must map names to numeric arrays"
                                 % (name, array.dtype))
            sample[name] = array
        return sample
