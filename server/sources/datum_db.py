"""Caffe ``Datum`` records in a key-value database: LMDB or LevelDB, as Caffe's Data layer reads them.

Records are served in key order (the order of Caffe's cursor). A Datum holds
raw uint8 ``data``, ``float_data``, or an ``encoded`` JPEG/PNG file, which is
decoded as transform_param's ``force_color``/``force_gray`` say (the file's
own channels otherwise), as ``DataTransformer`` decodes it.

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

import os
import shutil
import tempfile
from typing import List

import numpy as np

from server.caffe_proto import Datum
from server.decode import COLOR_NATIVE, decode_image
from server.sources.base import Sample, SourceError, image_sample


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
        return datum_sample(value, self.color)


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


class LevelDbSource:
    """Caffe ``Datum`` records in a LevelDB (``backend: LEVELDB``, Caffe's default)."""

    transformable = True

    def __init__(self, path: str, color: str = COLOR_NATIVE):
        import plyvel

        self.path = path
        self.color = color
        if not os.path.isdir(path):
            raise SourceError("LevelDB %s does not exist" % path)
        if not os.path.isfile(os.path.join(path, "CURRENT")):
            raise SourceError("%s is not a LevelDB (it has no CURRENT file)" % path)
        try:
            db, shadow = _open_leveldb_shadow(path)
        except (plyvel.Error, OSError) as exc:
            raise SourceError("cannot open LevelDB %s: %s" % (path, exc)) from None
        try:
            self._keys: List[bytes] = list(db.iterator(include_value=False))
        finally:
            db.close()
            shutil.rmtree(shadow, ignore_errors=True)
        if not self._keys:
            raise SourceError("LevelDB %s holds no records" % path)
        self._db = None
        self._shadow = None

    def __len__(self) -> int:
        return len(self._keys)

    def open(self) -> None:
        self._db, self._shadow = _open_leveldb_shadow(self.path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._db = self._shadow = None

    def describe(self, index: int) -> str:
        return "LevelDB %s key %r" % (self.path, self._keys[index].decode("utf-8", "replace"))

    def read(self, index: int) -> Sample:
        value = self._db.get(self._keys[index])
        if value is None:
            raise ValueError("record vanished from the LevelDB")
        return datum_sample(value, self.color)
