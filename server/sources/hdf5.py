"""Rows of HDF5 files, as Caffe's HDF5Data layer reads them.

The source is a list file naming ``.h5`` files (whitespace-separated, as
Caffe reads it with ``>>``); a relative name is relative to ``base_dir``,
the directory Caffe runs in. Each served array is the dataset of the same
name (Caffe's top name), one row per sample, with the stored shape after
the first axis; values become float32, as Caffe's float blobs. Like Caffe,
the source refuses scalar datasets, non-numeric ones, and files whose
datasets differ in row count; unlike Caffe (which finds out mid-training)
it checks every file at start-up, and also refuses empty files and rows
whose shape differs between files.

Reading. When the served datasets of all the files take at most
``HELD_BYTES`` as float32, the server holds them in memory once
(``before_fork``: read before the workers fork, so they share it), as Caffe's
HDF5Data holds its file: a batch is then a gather from memory, and the
server sends a batch of consecutive rows straight from it (NOTE [ Rows sent
in place ], server/assembly.py). Otherwise a worker reads a batch's rows file
by file (``read_many``): it holds the file it is reading when that file's
datasets take at most ``HELD_BYTES``, and reads rows of a larger file with
one sorted selection per batch. A file whose datasets reach past its end (a
file truncated while served) is refused when opened, so its rows are
reported as bad samples, never served as zeros.

Order. Without shuffling, samples come file after file, rows in order.
Caffe's ``shuffle: true`` permutes the order of the files at every pass and
the rows within a file each time it is loaded, so a file's rows stay
together; ``shuffled_order`` draws such an order.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from server.sources.base import BlockRead, Sample, SampleBlock, Source, SourceError, consecutive_slice

OPEN_FILES_PER_PROCESS = 8
HELD_BYTES = 1 << 30


def read_hdf5_list(list_path: str, base_dir: str = "") -> List[str]:
    """The file names an HDF5Data source list holds, resolved against ``base_dir``."""
    try:
        with open(list_path, encoding="utf-8") as f:
            names = f.read().split()
    except OSError as exc:
        raise SourceError("cannot read HDF5 file list %s: %s" % (list_path, exc.strerror)) from None
    if not names:
        raise SourceError("HDF5 file list %s names no files" % list_path)
    return [os.path.join(base_dir, name) if base_dir else name for name in names]


def _dataset_shape(handle, path: str, name: str) -> Tuple[int, ...]:
    import h5py

    dataset = handle.get(name)
    if not isinstance(dataset, h5py.Dataset):
        present = sorted(key for key in handle if isinstance(handle[key], h5py.Dataset))
        raise SourceError("HDF5 file %s has no dataset %r (it has %s)"
                          % (path, name, ", ".join(map(repr, present)) or "no datasets"))
    if dataset.dtype.kind not in "iuf":
        raise SourceError("HDF5 file %s dataset %r holds %s; Caffe reads integer and float datasets only"
                          % (path, name, dataset.dtype))
    if dataset.ndim < 1:
        raise SourceError("HDF5 file %s dataset %r is a scalar; Caffe needs at least one axis (rows)"
                          % (path, name))
    return tuple(int(d) for d in dataset.shape)


class Hdf5Source(Source):
    """The rows of the datasets ``datasets`` in the files a Caffe HDF5Data list names."""

    transformable = False

    def __init__(self, list_path: str, datasets: Sequence[str], base_dir: str = ""):
        import h5py

        if not datasets:
            raise SourceError("name at least one HDF5 dataset to serve")
        self.datasets = tuple(datasets)
        self.files = read_hdf5_list(list_path, base_dir)
        row_shapes = None
        counts = []
        for path in self.files:
            try:
                with h5py.File(path, "r") as handle:
                    shapes = [_dataset_shape(handle, path, name) for name in self.datasets]
            except OSError as exc:
                raise SourceError("cannot open HDF5 file %s (listed in %s): %s" % (path, list_path, exc)) from None
            rows = {shape[0] for shape in shapes}
            if len(rows) != 1:
                raise SourceError("HDF5 file %s: datasets %s have different row counts %s"
                                  % (path, ", ".join(self.datasets), [shape[0] for shape in shapes]))
            if shapes[0][0] == 0:
                raise SourceError("HDF5 file %s has no rows" % path)
            if row_shapes is None:
                row_shapes = [shape[1:] for shape in shapes]
            for name, shape, first in zip(self.datasets, shapes, row_shapes):
                if shape[1:] != first:
                    raise SourceError("HDF5 file %s dataset %r has rows of shape %s, but %s has %s"
                                      % (path, name, shape[1:], self.files[0], first))
            counts.append(shapes[0][0])
        self.row_counts = np.asarray(counts, dtype=np.int64)
        self.file_starts = np.concatenate([[0], np.cumsum(self.row_counts)])
        self.row_shapes = dict(zip(self.datasets, row_shapes))
        self._open: "OrderedDict[int, object]" = OrderedDict()
        self._in_memory: Tuple[int, Dict[str, np.ndarray]] = (-1, {})  # (file number, its datasets)
        self._held: Optional[Dict[str, np.ndarray]] = None  # every file's rows, once before_fork read them

    def __len__(self) -> int:
        return int(self.file_starts[-1])

    def open(self) -> None:
        self._open = OrderedDict()
        self._in_memory = (-1, {})

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open = OrderedDict()
        self._in_memory = (-1, {})

    def locate(self, index: int) -> Tuple[int, int]:
        """(file number, row) of sample ``index``."""
        file_number = int(np.searchsorted(self.file_starts, index, side="right")) - 1
        return file_number, index - int(self.file_starts[file_number])

    def describe(self, index: int) -> str:
        file_number, row = self.locate(index)
        return "HDF5 file %s row %d" % (self.files[file_number], row)

    def _handle(self, file_number: int):
        """The open file ``file_number``; ValueError if it was truncated since it was opened
        (h5py refuses to open a truncated file, but reads zeros past the end of an open one)."""
        import h5py

        handle = self._open.get(file_number)
        if handle is not None:
            self._check_complete(handle, self.files[file_number])
        else:
            handle = h5py.File(self.files[file_number], "r")
            self._open[file_number] = handle
            if len(self._open) > OPEN_FILES_PER_PROCESS:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(file_number)
        return handle

    def _check_complete(self, handle, path: str) -> None:
        """ValueError if a served dataset's stored bytes reach past the end of the file."""
        size = os.fstat(handle.id.get_vfd_handle()).st_size
        for name in self.datasets:
            dataset = handle[name].id
            offset = dataset.get_offset()  # None unless stored contiguously
            if offset is not None and offset + dataset.get_storage_size() > size:
                raise ValueError("HDF5 file %s is truncated: dataset %r ends at byte %d, the file has %d"
                                 % (path, name, offset + dataset.get_storage_size(), size))

    def before_fork(self, shuffled: bool) -> None:
        """Read every row of every served dataset into memory as float32, all files in list
        order, when they take at most ``HELD_BYTES``: the workers share them, and ``held_rows``
        offers them to the server. SourceError names a file that cannot be read."""
        row_values = sum(int(np.prod(shape)) for shape in self.row_shapes.values())
        if self._held is not None or len(self) * row_values * 4 > HELD_BYTES:
            return
        held = {name: np.empty((len(self),) + shape, np.float32) for name, shape in self.row_shapes.items()}
        for file_number, path in enumerate(self.files):
            start, end = int(self.file_starts[file_number]), int(self.file_starts[file_number + 1])
            try:
                handle = self._handle(file_number)
                for name, rows in held.items():
                    handle[name].read_direct(rows, dest_sel=np.s_[start:end])  # converting to float32
            except (OSError, ValueError, KeyError) as exc:
                raise SourceError("cannot read HDF5 file %s: %s" % (path, exc)) from None
        self.close()
        self._held = held

    def held_rows(self) -> Optional[Dict[str, np.ndarray]]:
        return self._held

    def read(self, index: int) -> Sample:
        if self._held is not None:
            return {name: held[index] for name, held in self._held.items()}
        file_number, row = self.locate(index)
        handle = self._handle(file_number)
        return {name: handle[name][row] for name in self.datasets}

    def read_many(self, indices: np.ndarray) -> BlockRead:
        """The rows of ``indices``: gathered from the held rows, else one block per file; a file
        that cannot be read is left to ``read``, which reports each of its rows."""
        if self._held is not None:
            return [SampleBlock(np.arange(len(indices)), self._held, rows=indices)], np.zeros(0, np.int64)
        file_numbers = np.searchsorted(self.file_starts, indices, side="right") - 1
        rows = indices - self.file_starts[file_numbers]
        blocks, rest = [], []
        for file_number in np.unique(file_numbers).tolist():
            positions = np.flatnonzero(file_numbers == file_number)
            try:
                arrays = self._rows(file_number, rows[positions])
            except (OSError, ValueError, KeyError):
                rest.append(positions)
                continue
            blocks.append(SampleBlock(positions, arrays))
        return blocks, np.concatenate(rest) if rest else np.zeros(0, np.int64)

    def _rows(self, file_number: int, rows: np.ndarray) -> Dict[str, np.ndarray]:
        held_file, arrays = self._in_memory
        if held_file != file_number:
            handle = self._handle(file_number)
            datasets = [handle[name] for name in self.datasets]
            if sum(d.size * d.dtype.itemsize for d in datasets) > HELD_BYTES:
                # h5py selects rows in increasing order only.
                unique, inverse = np.unique(rows, return_inverse=True)
                return {name: d[unique][inverse] for name, d in zip(self.datasets, datasets)}
            self._in_memory = (-1, {})  # the old file's memory goes before the new file's comes
            arrays = {name: d[...] for name, d in zip(self.datasets, datasets)}
            self._in_memory = (file_number, arrays)
        chosen = consecutive_slice(rows)  # rows in file order are views, no copy
        return {name: arrays[name][chosen] for name in self.datasets}

    def shuffled_order(self, rng: np.random.Generator) -> np.ndarray:
        """A pass in Caffe's shuffled order: files permuted, each file's rows permuted, together."""
        parts = [self.file_starts[f] + rng.permutation(self.row_counts[f])
                 for f in rng.permutation(len(self.files))]
        return np.concatenate(parts).astype(np.int64)
