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

import itertools
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
from server.sources.row_cache import RowCache


class DatumDbSource(Source):
    """Datums in a key-value database, by key order. A subclass knows how many
    records there are, lists their keys (``_list_keys_through``: at least
    through record ``index``, into ``_keys``) and gets values in a worker
    (``_get`` and ``_get_many``)."""

    kind = ""  # "LMDB" or "LevelDB", for messages

    def __init__(self, path: str, color: str, count: int):
        self.path = path
        self.color = color
        self._count = count
        self._keys: List[bytes] = []
        self._rows: Optional[RowCache] = None  # made in a worker by its first raw read (``_keep``)
        self._rows_decided = False
        if not count:
            raise SourceError("%s %s holds no records" % (self.kind, path))

    def __len__(self) -> int:
        return self._count

    def _list_keys_through(self, index: int) -> None:
        raise IndexError("record %d of a %s of %d records" % (index, self.kind, self._count))

    def _key_list(self, indices: Sequence[int]) -> List[bytes]:
        """The keys of records ``indices``."""
        if indices and max(indices) >= len(self._keys):
            self._list_keys_through(max(indices))
        return operator.itemgetter(*indices)(self._keys) if len(indices) > 1 else [self._keys[i] for i in indices]

    def describe(self, index: int) -> str:
        return "%s %s key %r" % (self.kind, self.path, self._key_list([index])[0].decode("utf-8", "replace"))

    def _get(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def _get_many(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        return list(map(self._get, keys))

    def read(self, index: int) -> Sample:
        value = self._get(self._key_list([index])[0])
        if value is None:
            raise ValueError("record vanished from the %s" % self.kind)
        return datum_sample(value, self.color)

    def read_many(self, indices: np.ndarray) -> BlockRead:
        """Raw Datums of a common layout in blocks, from this process's ``RowCache`` where it
        holds them (NOTE [ Raw Datums in memory ]); the rest (encoded, float_data, odd or
        missing records) left to ``read``."""
        blocks = []
        unread = np.arange(len(indices))
        if self._rows is not None:
            held = self._rows.held[indices]
            if held.any():
                blocks.append(SampleBlock(np.flatnonzero(held), {"data": self._rows.images, "label": self._rows.labels},
                                          rows=indices[held]))
                unread = np.flatnonzero(~held)
        if not len(unread):
            return blocks, unread
        parsed, rest = parse_raw_datums(self._get_many(self._key_list(indices[unread].tolist())))
        for block in parsed:
            labels = block.labels.astype(np.float32)
            self._keep(indices[unread[block.positions]], block.images, labels)
            blocks.append(SampleBlock(unread[block.positions], {"data": block.images, "label": labels}))
        return blocks, unread[rest]

    def _keep(self, indices: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        """Hold parsed rows in this process's ``RowCache``, made for the first image shape read
        if the database is small enough."""
        if not self._rows_decided:
            self._rows = RowCache.for_database(self._count, images.shape[1:])
            self._rows_decided = True
        if self._rows is not None and images.shape[1:] == self._rows.shape:
            self._rows.store(indices, images, labels)



def listing_reads_most_of(stat: dict, file_bytes: int) -> bool:
    """Whether listing every key of an LMDB with ``stat`` (``Environment.stat()``) reads most
    of its data file, and reading all of it ahead is affordable: its leaf pages outnumber
    its values' overflow pages, and the file takes at most half the available memory."""
    return stat["leaf_pages"] >= stat["overflow_pages"] and file_bytes <= available_memory_bytes() // 2


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo; 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def read_ahead(path: str) -> None:
    """Ask the kernel to read ``path`` into the page cache in the background; a hint only."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


class LmdbSource(DatumDbSource):
    """Caffe ``Datum`` records in an LMDB, raw (``data``/``float_data``) or encoded.

    Its size comes from the database's statistics, and each process lists
    the keys as far as it reads (``KEYS_LISTED_AT_ONCE`` or more at a time: few
    enough that a cold disk serves them in a moment),
    so serving in key order (Caffe's Data layer, TEST) starts at once
    whatever the size. A shuffled pass needs every key at its first batch:
    the server lists them once before the workers fork (``before_fork``), and
    the workers share the list.
    Where the values sit in the leaf pages (small raw Datums), listing every
    key reads nearly the whole file: the process then asks the kernel to read
    the file ahead in the background (``POSIX_FADV_WILLNEED``), which lists a
    cold 1.3 GB database of 1,280,000 records in under a second rather than
    three (``python -m bench.small_samples``). Where most pages are values'
    overflow pages (encoded images), or the file would take over half the
    available memory, the listing reads only what it needs.
    """

    kind = "LMDB"
    KEYS_LISTED_AT_ONCE = 8192

    def __init__(self, path: str, color: str = COLOR_NATIVE):
        import lmdb

        if not os.path.isdir(path) and not os.path.isfile(path):
            raise SourceError("LMDB %s does not exist" % path)
        try:
            env = self._open_env(path)
        except lmdb.Error as exc:
            raise SourceError("cannot open LMDB %s: %s" % (path, exc)) from None
        try:
            stat = env.stat()
        finally:
            env.close()
        super().__init__(path, color, stat["entries"])
        self._env = None
        self._txn = None
        data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
        self._file_read_ahead = data_file if listing_reads_most_of(stat, os.path.getsize(data_file)) else None

    def before_fork(self, shuffled: bool) -> None:
        if shuffled:
            self._list_keys_through(self._count - 1)

    @staticmethod
    def _open_env(path: str, readahead: bool = False):
        """The database, read-only. With LMDB's reader lock where the lock file can be written,
        so that a writer committing meanwhile never recycles pages this process still reads
        (its transaction keeps the snapshot it began with); without it on read-only media."""
        import lmdb

        options = dict(readonly=True, readahead=readahead, subdir=os.path.isdir(path), max_readers=512)
        try:
            return lmdb.open(path, lock=True, **options)
        except lmdb.Error:
            return lmdb.open(path, lock=False, **options)

    def open(self) -> None:
        self._env = self._open_env(self.path)
        self._txn = self._env.begin(buffers=True)

    def close(self) -> None:
        if self._env is not None:
            self._txn.abort()
            self._env.close()
            self._env = self._txn = None

    def _list_keys_through(self, index: int) -> None:
        if index >= self._count:
            raise IndexError("record %d of an LMDB of %d records" % (index, self._count))
        # A listing reads every leaf page in order: its own environment with the kernel's
        # readahead lists a cold million-record database in seconds where the reading
        # environment (readahead off, for random reads) takes half a minute. Opened per
        # call, so no environment crosses a fork; LMDB opens a database once per process, so
        # the reading environment is closed meanwhile (nothing read from it is still held).
        reading = self._env is not None
        if reading:
            self.close()
        env = self._open_env(self.path, readahead=True)
        try:
            with env.begin(buffers=False) as txn:
                cursor = txn.cursor()
                if self._keys:
                    cursor.set_key(self._keys[-1])
                    cursor.next()
                else:
                    cursor.first()
                wanted = max(index + 1, len(self._keys) + self.KEYS_LISTED_AT_ONCE)
                if wanted - len(self._keys) > self.KEYS_LISTED_AT_ONCE and self._file_read_ahead:
                    read_ahead(self._file_read_ahead)
                    self._file_read_ahead = None  # once per process
                keys = cursor.iternext(keys=True, values=False)
                self._keys.extend(itertools.islice(keys, wanted - len(self._keys)))
        finally:
            env.close()
            if reading:
                self.open()
        if len(self._keys) <= index:
            raise ValueError("the LMDB has %d records, not the %d it had at start-up" % (len(self._keys), self._count))

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
        super().__init__(path, color, len(keys))
        self._keys = keys  # LevelDB keeps no count: the keys are listed at start-up
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
