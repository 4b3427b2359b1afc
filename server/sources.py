"""Sample readers, one per source format.

Contract of a source: it is built in the supervisor (cheap: it lists what
there is, then closes every handle), forked into the loader workers, and
``open()``ed in each worker after the fork, read-only. ``read(i)`` returns the
i-th sample as a dict of arrays: for the image sources here, ``data`` (a
C x H x W image, uint8 or float32, BGR) and ``label``. ``describe(i)`` names
sample i for error messages (its key or file). ``transformable`` says
whether Caffe's ``transform_param`` applies to ``data``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from server.caffe_proto import Datum
from server.decode import COLOR_BGR, COLOR_NATIVE, decode_image, read_image_file


class SourceError(ValueError):
    """The source cannot be used; the message names the file and the problem."""


Sample = Dict[str, np.ndarray]


def image_sample(image: np.ndarray, label: float) -> Sample:
    return {"data": image, "label": np.float32(label)}


class LmdbSource:
    """Caffe ``Datum`` records in an LMDB, raw (``data``/``float_data``) or encoded."""

    transformable = True

    def __init__(self, path: str, color: str = COLOR_NATIVE):
        import lmdb

        self.path = path
        self.color = color
        if not os.path.isdir(path) and not os.path.isfile(path):
            raise SourceError("LMDB %s does not exist" % path)
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                            subdir=os.path.isdir(path), max_readers=512)
        except lmdb.Error as exc:
            raise SourceError("cannot open LMDB %s: %s" % (path, exc)) from None
        try:
            with env.begin(buffers=False) as txn:
                self._keys: List[bytes] = list(txn.cursor().iternext(keys=True, values=False))
        finally:
            env.close()
        if not self._keys:
            raise SourceError("LMDB %s holds no records" % path)
        self._env = None
        self._txn = None

    def __len__(self) -> int:
        return len(self._keys)

    def open(self) -> None:
        import lmdb

        self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                              subdir=os.path.isdir(self.path), max_readers=512)
        self._txn = self._env.begin(buffers=True)

    def close(self) -> None:
        if self._env is not None:
            self._txn.abort()
            self._env.close()
            self._env = self._txn = None

    def describe(self, index: int) -> str:
        return "LMDB %s key %r" % (self.path, self._keys[index].decode("utf-8", "replace"))

    def read(self, index: int) -> Sample:
        value = self._txn.get(self._keys[index])
        if value is None:
            raise ValueError("record vanished from the LMDB")
        datum = Datum()
        datum.ParseFromString(value)
        return image_sample(datum_image(datum, self.color), datum.label)


def datum_image(datum: Datum, color: str = COLOR_NATIVE) -> np.ndarray:
    """The C x H x W image a Datum holds (uint8 raw or decoded, or float32 float_data)."""
    if datum.encoded:
        return decode_image(datum.data, color)
    shape = (datum.channels, datum.height, datum.width)
    expected = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != expected:
            raise ValueError("Datum data has %d bytes for shape %s" % (len(datum.data), shape))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != expected or expected == 0:
        raise ValueError("Datum has %d float_data values for shape %s" % (len(datum.float_data), shape))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def read_image_list(list_path: str) -> Tuple[List[Tuple[str, int]], List[int]]:
    """Parse a Caffe ImageData list into ``(entries, line_numbers)``.

    Each non-blank line is ``PATH LABEL``, split at the last space so PATH may
    contain spaces; ``line_numbers[i]`` is the 1-based line of ``entries[i]``.
    Raises SourceError naming the file and line for a malformed or empty list.
    """
    entries, line_numbers = [], []
    try:
        with open(list_path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip()
                if not line:
                    continue
                path, _, label_text = line.rpartition(" ")
                try:
                    label = int(label_text)
                except ValueError:
                    label = None
                if not path or label is None or not -2**31 <= label < 2**31:
                    raise SourceError("%s line %d: expected 'PATH LABEL' with an int32 label, got %r"
                                      % (list_path, number, line))
                entries.append((path, label))
                line_numbers.append(number)
    except OSError as exc:
        raise SourceError("cannot read image list %s: %s" % (list_path, exc.strerror)) from None
    if not entries:
        raise SourceError("image list %s names no images" % list_path)
    return entries, line_numbers


class ImageListSource:
    """Image files named by a Caffe ImageData list file, relative to ``root_folder``."""

    transformable = True

    def __init__(self, list_path: str, root_folder: str = "", color: str = COLOR_BGR,
                 resize_hw: Tuple[int, int] = (0, 0)):
        self.entries, _ = read_image_list(list_path)
        self.root_folder = root_folder
        self.color = color
        self.resize_hw = resize_hw

    def __len__(self) -> int:
        return len(self.entries)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self, index: int) -> str:
        return "image %s" % (self.root_folder + self.entries[index][0])

    def read(self, index: int) -> Sample:
        path, label = self.entries[index]
        return image_sample(read_image_file(self.root_folder + path, self.color, self.resize_hw), label)


class NpzSource:
    """``data`` (N x C x H x W, uint8 or float32) and ``label`` (N) arrays in an .npz file."""

    transformable = True

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
        self._data, self._labels = self._load()

    def close(self) -> None:
        self._data = self._labels = None

    def describe(self, index: int) -> str:
        return "%s sample %d" % (self.path, index)

    def read(self, index: int) -> Sample:
        return image_sample(self._data[index], self._labels[index])


SOURCE_KINDS = ("lmdb", "imagelist", "npz")


def open_source(spec: str, root_folder: str = "", color: Optional[str] = None):
    """Build the source ``KIND:PATH`` names (see ``SOURCE_KINDS``)."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not path:
        raise SourceError("--source %r: expected KIND:PATH with KIND one of %s, e.g. lmdb:/data/train_lmdb"
                          % (spec, ", ".join(SOURCE_KINDS)))
    if kind == "lmdb":
        return LmdbSource(path, color or COLOR_NATIVE)
    if kind == "imagelist":
        return ImageListSource(path, root_folder, color or COLOR_BGR)
    return NpzSource(path)
