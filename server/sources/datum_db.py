"""Caffe ``Datum`` records in a key-value database: LMDB or LevelDB, as Caffe's Data layer reads them.

Records are served in key order (the order of Caffe's cursor). A Datum holds
raw uint8 ``data``, ``float_data``, or an ``encoded`` JPEG/PNG file, which is
decoded as transform_param's ``force_color``/``force_gray`` say (the file's
own channels otherwise), as ``DataTransformer`` decodes it. Raw records are
read a batch at a time (``read_many``, server/sources/raw_datums.py); the
others one by one.

NOTE [ LevelDB in many processes ]
LevelDB lets one process at a time open a database, and opening it writes
into its directory (LOCK, LOG, a new MANIFEST), which fails on read-only
data. Caffe has one reader; zfeed has one per loader process. So every
process opens a *shadow* of the database: a private temporary directory of
symbolic links to the database's files, without LOCK and LOG. LevelDB never
changes a file once written (it writes new files, then renames or deletes),
so in the shadow it only adds files or replaces and removes links, and the
database itself is never touched. The shadow is removed on close.
"""

from __future__ import annotations

import operator
import os
import shutil
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from server.caffe_proto import Datum
from server.decode import COLOR_NATIVE, decode_image
from server.sources.base import BlockRead, Sample, SampleBlock, Source, SourceError, image_sample
from server.sources.raw_datums import parse_raw_datums


class DatumDbSource(Source):
    """Datums in a key-value database, by key order. A subclass lists the keys
    (``keys``) and gets values in a worker (``_get`` and ``_get_many``)."""

    kind = ""  # "LMDB" or "LevelDB", for messages

    def __init__(self, path: str, color: str, keys: List[bytes]):
        self.path = path
        self.color = color
        self._keys = keys
        if not keys:
            raise SourceError("%s %s holds no records" % (self.kind, path))

    def __len__(self) -> int:
        return len(self._keys)

    def describe(self, index: int) -> str:
        return "%s %s key %r" % (self.kind, self.path, self._keys[index].decode("utf-8", "replace"))

    def _get(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def _get_many(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        return list(map(self._get, keys))

    def read(self, index: int) -> Sample:
        value = self._get(self._keys[index])
        if value is None:
            raise ValueError("record vanished from the %s" % self.kind)
        return datum_sample(value, self.color)

    def read_many(self, indices: np.ndarray) -> BlockRead:
        """Raw Datums of a common layout in blocks; the rest (encoded, float_data,
        odd or missing records) left to ``read``."""
        keys = operator.itemgetter(*indices.tolist())(self._keys) if len(indices) > 1 else \
            [self._keys[i] for i in indices.tolist()]
        blocks, rest = parse_raw_datums(self._get_many(keys))
        return [SampleBlock(b.positions, {"data": b.images, "label": b.labels.astype(np.float32)})
                for b in blocks], rest



class LmdbSource(DatumDbSource):
    """Caffe ``Datum`` records in an LMDB, raw (``data``/``float_data``) or encoded."""

    kind = "LMDB"

    def __init__(self, path: str, color: str = COLOR_NATIVE):
        import lmdb

        if not os.path.isdir(path) and not os.path.isfile(path):
            raise SourceError("LMDB %s does not exist" % path)
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                            subdir=os.path.isdir(path), max_readers=512)
        except lmdb.Error as exc:
            raise SourceError("cannot open LMDB %s: %s" % (path, exc)) from None
        try:
            with env.begin(buffers=False) as txn:
                keys = list(txn.cursor().iternext(keys=True, values=False))
        finally:
            env.close()
        super().__init__(path, color, keys)
        self._env = None
        self._txn = None

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

    def _get(self, key: bytes) -> Optional[bytes]:
        return self._txn.get(key)

    def _get_many(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        return list(map(self._txn.get, keys))


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


def datum_sample(value: bytes, color: str = COLOR_NATIVE) -> Sample:
    """The sample of one serialised Datum: its image and its label."""
    datum = Datum()
    datum.ParseFromString(value)
    return image_sample(datum_image(datum, color), datum.label)


_LEVELDB_PRIVATE_FILES = ("LOCK", "LOG", "LOG.old")


def _open_leveldb_shadow(path: str):
    """(db, shadow_dir): ``path`` opened through a shadow (NOTE [ LevelDB in many processes ])."""
    import plyvel

    shadow = tempfile.mkdtemp(prefix="zfeed-leveldb-")
    try:
        for name in os.listdir(path):
            if name not in _LEVELDB_PRIVATE_FILES:
                os.symlink(os.path.join(os.path.abspath(path), name), os.path.join(shadow, name))
        return plyvel.DB(shadow, create_if_missing=False), shadow
    except BaseException:
        shutil.rmtree(shadow, ignore_errors=True)
        raise


class LevelDbSource(DatumDbSource):
    """Caffe ``Datum`` records in a LevelDB (``backend: LEVELDB``, Caffe's default)."""

    kind = "LevelDB"

    def __init__(self, path: str, color: str = COLOR_NATIVE):
        import plyvel

        if not os.path.isdir(path):
            raise SourceError("LevelDB %s does not exist" % path)
        if not os.path.isfile(os.path.join(path, "CURRENT")):
            raise SourceError("%s is not a LevelDB (it has no CURRENT file)" % path)
        try:
            db, shadow = _open_leveldb_shadow(path)
        except (plyvel.Error, OSError) as exc:
            raise SourceError("cannot open LevelDB %s: %s" % (path, exc)) from None
        try:
            keys = list(db.iterator(include_value=False))
        finally:
            db.close()
            shutil.rmtree(shadow, ignore_errors=True)
        super().__init__(path, color, keys)
        self._db = None
        self._shadow = None

    def open(self) -> None:
        self._db, self._shadow = _open_leveldb_shadow(self.path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._db = self._shadow = None

    def _get(self, key: bytes) -> Optional[bytes]:
        return self._db.get(key)
