"""The zfeed wire format: the one module the server and the layer both import.

A message carries one batch, or several consecutive batches of small
samples (fewer, larger messages cost less per batch on both sides)::

    frame 0      msgpack header (a map, see ``encode_header``)
    frames 1..   raw C-contiguous bytes of each array, in header order; an array
                 larger than ``MAX_FRAME_BYTES`` is split along its first axis
                 into frames of ``rows_per_frame`` rows each

The header names the format version, the message kind, the stream (which
server), the origin (``StreamOrigin``: which shard of which data, from which
server process), the sequence number of its first batch, the rows of one batch
(``batch_rows``), for every array its name, dtype, shape and rows per frame,
and for every sample its dataset index and its epoch. A message of several
batches (more rows than ``batch_rows``) has every array in one frame, and
``Batch.split`` cuts it, without copies, into batches ``seq``, ``seq + 1``, ... Its optional
``extra`` map may say, under ``finish``, that an array holds uint8 pixels
whose Caffe transform the receiver completes: ``{"data": {"mean": [per
channel] or None, "scale": s}}``. ``Batch.array`` and ``Batch.copy_into``
then deliver ``(x - mean) * scale`` in float32, computed exactly as the
server's float32 path computes it (so the two are bit-identical).

With a ``codec`` in the header (``lz4`` or ``zstd``, the server's
``--compress``), a frame shorter than its rows' bytes holds those bytes
compressed: an lz4 block without a stored size, or one zstd frame. A frame of
exactly its rows' bytes is raw, as the server sends whatever compression
does not shrink. The receiver decompresses into a buffer of exactly the
expected size, so no frame can claim more memory than its header allows.
The codec packages (``lz4``, ``zstandard``) are imported only for a batch
that uses them.

Nothing that arrives is unpickled or evaluated: the header is plain msgpack
(no extension types), dtypes come from a fixed whitelist, and every frame's
length is checked against dtype x shape before ``np.frombuffer`` views it.

This module must keep working on Python 3.8 with numpy, msgpack and (for
``zmq.Frame`` inputs) pyzmq only; it must not import anything from ``server``.
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import msgpack
import numpy as np

WIRE_VERSION = 4  # 4: the header's "origin"
KIND_BATCH = "batch"

# glibc serves allocations of 32 MiB and more with fresh pages every time,
# which makes big frames several times slower to receive; stay well below.
MAX_FRAME_BYTES = 16 * 1024 * 1024
# Headers are a few hundred bytes plus 12 bytes per sample.
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_ARRAYS = 64
# finish_pixels works on chunks of this many output bytes: they stay in the L2 cache.
FINISH_CHUNK_BYTES = 256 * 1024
MAX_NDIM = 8

# Little-endian, fixed-size numeric dtypes only: never object, void or strings.
ALLOWED_DTYPES: Dict[str, np.dtype] = {
    np.dtype(name).str: np.dtype(name)
    for name in (
        "<f4", "<f8", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "|b1",
    )
}
CODECS = {"lz4": ("lz4.block", "lz4"), "zstd": ("zstandard", "zstandard")}  # name: (module, package)
# Measured (bench/compression.py): zstd -3 shrinks real crops 1.34x at ~1.5 GB/s per core.
DEFAULT_ZSTD_LEVEL = -3
_INDEX_DTYPE = np.dtype("<i8")
_EPOCH_DTYPE = np.dtype("<i4")


class WireError(ValueError):
    """A message that is not a valid zfeed batch; the text says what is wrong."""


class CodecMissingError(WireError):
    """A batch is compressed with a codec whose package this Python lacks: a set-up
    error of this trainer, not a fault of the message."""


class StreamOrigin(NamedTuple):
    """Where a message comes from: a server process (``server``, random per process), serving
    shard ``shard_index`` of ``shard_count`` of ``samples`` samples in the order of ``seed``."""

    server: str
    shard_index: int
    shard_count: int
    seed: int
    samples: int


def _parse_origin(value: object) -> Optional[StreamOrigin]:
    if value is None:
        return None
    fields = value if isinstance(value, dict) else {}
    server, shard, seed, samples = (fields.get(key) for key in ("server", "shard", "seed", "samples"))
    if not (isinstance(server, str) and 0 < len(server) <= 64 and isinstance(shard, list) and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard + [seed, samples])
            and 0 <= shard[0] < shard[1] and seed >= 0 and samples >= 0):
        raise WireError("header 'origin' is not {server: id, shard: [i, n], seed: s, samples: n}: %r" % (value,))
    return StreamOrigin(server, shard[0], shard[1], seed, samples)


class ArraySpec:
    """Name, dtype, shape and split of one array in a batch."""

    __slots__ = ("name", "dtype", "shape", "rows_per_frame")

    def __init__(self, name: str, dtype: np.dtype, shape: Tuple[int, ...], rows_per_frame: int):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.rows_per_frame = rows_per_frame

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    @property
    def frame_count(self) -> int:
        if self.shape[0] == 0:
            return 1
        return math.ceil(self.shape[0] / self.rows_per_frame)

    def frame_rows(self) -> List[Tuple[int, int]]:
        """The [start, stop) row range of each frame."""
        rows = self.shape[0]
        step = self.rows_per_frame
        return [(start, min(start + step, rows)) for start in range(0, max(rows, 1), step)]


def array_spec(name: str, dtype: np.dtype, shape: Sequence[int],
               max_frame_bytes: int = MAX_FRAME_BYTES) -> ArraySpec:
    """The spec ``encode_batch`` uses for an array of this dtype and shape."""
    dtype = np.dtype(dtype)
    if dtype.str not in ALLOWED_DTYPES:
        raise WireError("array %r has dtype %s, which zfeed does not send (allowed: %s)"
                        % (name, dtype, ", ".join(sorted(ALLOWED_DTYPES))))
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise WireError("array %r is 0-d; batch arrays need a leading batch axis" % name)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if row_bytes > max_frame_bytes:
        raise WireError("one row of array %r is %d bytes, more than the %d-byte frame limit"
                        % (name, row_bytes, max_frame_bytes))
    rows_per_frame = max(1, max_frame_bytes // max(row_bytes, 1))
    return ArraySpec(name, dtype, shape, rows_per_frame)


def encode_header(stream: str, seq: int, specs: Sequence[ArraySpec],
                  indices: np.ndarray, epochs: np.ndarray,
                  extra: Optional[dict] = None, codec: Optional[str] = None,
                  batch_rows: Optional[int] = None, origin: Optional[StreamOrigin] = None) -> bytes:
    """Pack a message header. ``indices``/``epochs`` hold one entry per sample;
    ``codec`` names the compression of frames that are shorter than their rows;
    ``batch_rows`` is the rows of one batch (default: the message is one batch);
    ``origin``: what the server serves (a server always sends it)."""
    header = {
        "zfeed": WIRE_VERSION,
        "kind": KIND_BATCH,
        "stream": stream,
        "seq": int(seq),
        "batch_rows": int(len(indices) if batch_rows is None else batch_rows),
        "arrays": [[s.name, s.dtype.str, list(s.shape), s.rows_per_frame] for s in specs],
        "index": np.ascontiguousarray(indices, dtype=_INDEX_DTYPE).tobytes(),
        "epoch": np.ascontiguousarray(epochs, dtype=_EPOCH_DTYPE).tobytes(),
    }
    if extra:
        header["extra"] = extra
    if codec:
        header["codec"] = codec
    if origin is not None:
        header["origin"] = {"server": origin.server, "shard": [origin.shard_index, origin.shard_count],
                            "seed": origin.seed, "samples": origin.samples}
    return msgpack.packb(header, use_bin_type=True)


def _flat_bytes(spec: ArraySpec, array: np.ndarray) -> np.ndarray:
    if array.shape != spec.shape or array.dtype != spec.dtype:
        raise WireError("array %r is %s %s, its spec says %s %s"
                        % (spec.name, array.dtype, array.shape, spec.dtype, spec.shape))
    if not array.flags.c_contiguous:
        raise WireError("array %r is not C-contiguous" % spec.name)
    return array.reshape(-1).view(np.uint8) if array.size else np.zeros(0, np.uint8)


def array_frames(spec: ArraySpec, array: np.ndarray, packed: Optional[np.ndarray] = None,
                 packed_lengths: Optional[Sequence[int]] = None) -> List[memoryview]:
    """Zero-copy views of ``array`` split into the frames ``spec`` describes.

    With ``packed`` (what ``pack_frames`` wrote) and its ``packed_lengths``, a
    frame that compressed to fewer bytes is sent from ``packed`` instead.
    """
    flat = _flat_bytes(spec, array)
    row_bytes = spec.row_bytes
    frames = []
    for number, (start, stop) in enumerate(spec.frame_rows()):
        begin, end = start * row_bytes, stop * row_bytes
        if packed_lengths is not None and packed_lengths[number] < end - begin:
            frames.append(memoryview(packed[begin:begin + packed_lengths[number]]))
        else:
            frames.append(memoryview(flat[begin:end]))
    return frames


class Codec:
    """One compression codec of the wire (``CODECS``), its package imported on first use.

    Not thread-safe: it keeps one (de)compression context for its calls.
    """

    def __init__(self, name: str, level: Optional[int] = None):
        if name not in CODECS:
            raise WireError("codec %r is unknown; zfeed compresses with %s" % (name, ", ".join(CODECS)))
        if level is not None and name != "zstd":
            raise WireError("only zstd takes a level; %s does not" % name)
        self.name = name
        self.level = DEFAULT_ZSTD_LEVEL if level is None and name == "zstd" else level
        module, package = CODECS[name]
        try:
            self._module = importlib.import_module(module)
        except ImportError:
            raise CodecMissingError("%s compression needs the %r package, which this Python (%s) lacks: pip install %s "
                            "(or run the data server without --compress)"
                            % (name, package, sys.executable, package)) from None
        self._compressor = None
        self._decompressor = None

    def describe(self) -> str:
        return self.name if self.level is None else "%s level %d" % (self.name, self.level)

    def compress(self, data: memoryview) -> bytes:
        if self.name == "lz4":
            return self._module.compress(data, store_size=False)
        if self._compressor is None:
            self._compressor = self._module.ZstdCompressor(level=self.level)
        return self._compressor.compress(data)

    def decompress(self, data: memoryview, size: int) -> memoryview:
        """Exactly ``size`` bytes from ``data``, or ``WireError``; never allocates more."""
        try:
            if self.name == "lz4":
                out = self._module.decompress(data, uncompressed_size=size)
                filled = len(out)
            else:
                out, filled = self._zstd_decompress(data, size)
        except Exception as exc:  # each codec raises its own error types
            raise WireError("%s frame does not decompress: %s" % (self.name, exc)) from None
        if filled != size:
            raise WireError("%s frame decompresses to %s%d bytes, its rows hold %d"
                            % (self.name, "more than " if filled > size else "", min(filled, size), size))
        return _buffer_of(out)

    def _zstd_decompress(self, data: memoryview, size: int) -> Tuple[np.ndarray, int]:
        # Not ZstdDecompressor.decompress: it allocates what the frame header claims.
        if self._decompressor is None:
            self._decompressor = self._module.ZstdDecompressor()
        out = np.empty(size, np.uint8)
        reader = self._decompressor.stream_reader(data)
        view, filled = memoryview(out), 0
        while filled < size:
            count = reader.readinto(view[filled:])
            if not count:
                break
            filled += count
        if filled == size and reader.read(1):
            filled += 1  # more data than the rows hold
        return out, filled


def pack_frames(codec: Codec, spec: ArraySpec, array: np.ndarray, packed: np.ndarray) -> List[int]:
    """Compress each frame of ``array`` into the same byte range of ``packed`` (its size
    in bytes) when that makes it shorter; returns each frame's length on the wire."""
    flat = _flat_bytes(spec, array)
    row_bytes = spec.row_bytes
    lengths = []
    for start, stop in spec.frame_rows():
        begin, end = start * row_bytes, stop * row_bytes
        compressed = codec.compress(memoryview(flat[begin:end]))
        if len(compressed) < end - begin:
            packed[begin:begin + len(compressed)] = np.frombuffer(compressed, np.uint8)
            lengths.append(len(compressed))
        else:
            lengths.append(end - begin)
    return lengths


def encode_batch(stream: str, seq: int, arrays: Dict[str, np.ndarray],
                 indices: np.ndarray, epochs: np.ndarray,
                 extra: Optional[dict] = None,
                 max_frame_bytes: int = MAX_FRAME_BYTES,
                 codec: Optional["Codec"] = None, batch_rows: Optional[int] = None) -> List[object]:
    """Header bytes followed by frames of every array, in dict order: zero-copy
    views, or with ``codec`` compressed copies of the frames that shrink.
    ``batch_rows``: rows of one batch, for a message of several."""
    specs = [array_spec(name, a.dtype, a.shape, max_frame_bytes) for name, a in arrays.items()]
    frames: List[object] = [encode_header(stream, seq, specs, indices, epochs, extra,
                                          codec.name if codec else None, batch_rows)]
    for spec in specs:
        array = arrays[spec.name]
        if codec is None:
            frames.extend(array_frames(spec, array))
        else:
            packed = np.empty(spec.nbytes, np.uint8)
            frames.extend(array_frames(spec, array, packed, pack_frames(codec, spec, array, packed)))
    return frames


class Batch:
    """A decoded batch. Arrays are views of the received frames, not copies
    (of the decompressed frames, for frames that came compressed).

    Keep the Batch alive while any array obtained from it is in use: the
    frames' memory belongs to it.
    """

    def __init__(self, stream: str, seq: int, specs: List[ArraySpec],
                 frames_by_array: List[List[memoryview]], indices: np.ndarray,
                 epochs: np.ndarray, extra: dict, keepalive: Sequence[object], wire_bytes: int = 0,
                 batch_rows: Optional[int] = None, origin: Optional[StreamOrigin] = None):
        self.stream = stream
        self.origin = origin
        self.seq = seq
        self.wire_bytes = wire_bytes  # the message's size as received, header and compression included
        self.specs = specs
        self.indices = indices
        self.epochs = epochs
        self.extra = extra
        self.batch_rows = len(indices) if batch_rows is None else batch_rows
        self._frames = {spec.name: views for spec, views in zip(specs, frames_by_array)}
        self._spec_by_name = {spec.name: spec for spec in specs}
        self._keepalive = keepalive
        self._finish = _parse_finish(extra.get("finish"), self._spec_by_name)

    def split(self) -> List["Batch"]:
        """The batches this message carries, in order: itself when it is one batch, else
        views of ``batch_rows`` rows each (every array is one frame then, see decode_batch)."""
        count = self.size // self.batch_rows if self.batch_rows else 1
        if count <= 1:
            return [self]
        rows = self.batch_rows
        parts = []
        for number in range(count):
            part = object.__new__(Batch)
            part.stream, part.seq, part.extra, part.batch_rows = self.stream, self.seq + number, self.extra, rows
            part.origin = self.origin
            part.wire_bytes = self.wire_bytes * (number + 1) // count - self.wire_bytes * number // count
            part.indices = self.indices[number * rows:(number + 1) * rows]
            part.epochs = self.epochs[number * rows:(number + 1) * rows]
            part.specs = [ArraySpec(spec.name, spec.dtype, (rows,) + spec.shape[1:], spec.rows_per_frame)
                          for spec in self.specs]
            part._frames = {spec.name: [self._frames[spec.name][0][number * rows * spec.row_bytes:
                                                                   (number + 1) * rows * spec.row_bytes]]
                            for spec in self.specs}
            part._spec_by_name = {spec.name: spec for spec in part.specs}
            part._keepalive = self._keepalive
            part._finish = self._finish
            parts.append(part)
        return parts

    @property
    def names(self) -> List[str]:
        return [spec.name for spec in self.specs]

    @property
    def size(self) -> int:
        return len(self.indices)

    def spec(self, name: str) -> ArraySpec:
        try:
            return self._spec_by_name[name]
        except KeyError:
            raise KeyError("batch has no array %r (it has %s)" % (name, ", ".join(self.names)))

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.spec(name).shape

    def dtype(self, name: str) -> np.dtype:
        """The dtype ``array`` returns: float32 for pixels finished here, else as sent."""
        return np.dtype(np.float32) if name in self._finish else self.spec(name).dtype

    def raw(self, name: str) -> np.ndarray:
        """The array as it was sent: a read-only view when it came in one frame, else one copy."""
        spec = self.spec(name)
        views = self._frames[name]
        if len(views) == 1:
            return np.frombuffer(views[0], dtype=spec.dtype).reshape(spec.shape)
        out = np.empty(spec.shape, spec.dtype)
        self._copy_frames(name, out)
        return out

    def array(self, name: str) -> np.ndarray:
        """The array as Caffe's blob holds it (pixels finished into float32), one copy at most."""
        if name not in self._finish:
            return self.raw(name)
        out = np.empty(self.spec(name).shape, np.float32)
        self.copy_into(name, out)
        return out

    def copy_into(self, name: str, out: np.ndarray) -> None:
        """Write array ``name`` as ``array`` gives it into ``out`` (same shape), frame by frame."""
        spec = self.spec(name)
        if tuple(out.shape) != spec.shape:
            raise ValueError("array %r has shape %s, the destination %s"
                             % (name, spec.shape, tuple(out.shape)))
        if name in self._finish:
            if out.dtype != np.float32:
                raise ValueError("array %r is finished into float32, the destination is %s" % (name, out.dtype))
            mean, scale = self._finish[name]
            for pixels, target in self._chunks(name, out):
                finish_pixels(pixels, mean, scale, target)
        else:
            self._copy_frames(name, out)

    def chunks(self, name: str) -> List[Tuple[int, np.ndarray]]:
        """Array ``name`` as sent, without any copy: (first row, read-only view) per frame."""
        spec = self.spec(name)
        return [(start, np.frombuffer(view, dtype=spec.dtype).reshape((stop - start,) + spec.shape[1:]))
                for (start, stop), view in zip(spec.frame_rows(), self._frames[name])]

    def _chunks(self, name: str, out: np.ndarray):
        for start, chunk in self.chunks(name):
            yield chunk, out[start:start + len(chunk)]

    def _copy_frames(self, name: str, out: np.ndarray) -> None:
        for chunk, target in self._chunks(name, out):
            target[...] = chunk


def finish_pixels(pixels: np.ndarray, mean: Optional[np.ndarray], scale: np.float32, out: np.ndarray) -> None:
    """``out = (pixels - mean) * scale`` in float32, a few samples at a time so that each
    chunk stays in cache (one sample at a time for large images).

    The same float32 operations, in the same order, as the server's
    ``transform_into``: the result is bit-identical to sending float32.
    """
    rows = max(1, FINISH_CHUNK_BYTES // max(1, out[0].nbytes if len(out) else 1))
    for start in range(0, len(pixels), rows):
        source, target = pixels[start:start + rows], out[start:start + rows]
        if mean is None:
            np.multiply(source, scale, out=target, dtype=np.float32, casting="unsafe")
            continue
        np.subtract(source, mean, out=target, dtype=np.float32, casting="unsafe")
        if scale != 1.0:
            np.multiply(target, scale, out=target)


def _parse_finish(finish: object, specs: Dict[str, ArraySpec]) -> Dict[str, tuple]:
    """Validate the header's ``finish`` map: {name: (mean (C,1,1) float32 or None, scale)}."""
    if finish is None:
        return {}
    if not isinstance(finish, dict):
        raise WireError("header 'finish' is not a map")
    parsed = {}
    for name, params in finish.items():
        spec = specs.get(name)
        if spec is None or spec.dtype != np.uint8 or len(spec.shape) != 4:
            raise WireError("'finish' names %r, which is not an N x C x H x W uint8 array" % (name,))
        if not isinstance(params, dict) or set(params) != {"mean", "scale"}:
            raise WireError("'finish' of %r must hold exactly 'mean' and 'scale'" % name)
        mean, scale = params["mean"], params["scale"]
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise WireError("'finish' scale of %r is not a number" % name)
        if mean is not None:
            if (not isinstance(mean, list) or len(mean) != spec.shape[1]
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean)):
                raise WireError("'finish' mean of %r must list %d numbers (one per channel)" % (name, spec.shape[1]))
            mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        parsed[name] = (mean, np.float32(scale))
    return parsed


def _buffer_of(frame: object) -> memoryview:
    # zmq.Frame exposes .buffer; bytes, bytearray and memoryview are buffers already.
    buffer = getattr(frame, "buffer", frame)
    view = memoryview(buffer)  # type: ignore[arg-type]
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _parse_spec(entry: object, max_batch_bytes: int) -> ArraySpec:
    if not (isinstance(entry, list) and len(entry) == 4):
        raise WireError("array entry %r is not [name, dtype, shape, rows_per_frame]" % (entry,))
    name, dtype_str, shape, rows_per_frame = entry
    if not isinstance(name, str):
        raise WireError("array name %r is not a string" % (name,))
    if not isinstance(dtype_str, str) or dtype_str not in ALLOWED_DTYPES:
        raise WireError("array %r has dtype %r; zfeed accepts only %s"
                        % (name, dtype_str, ", ".join(sorted(ALLOWED_DTYPES))))
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise WireError("array %r has shape %r; expected 1 to %d non-negative integers"
                        % (name, shape, MAX_NDIM))
    dtype = ALLOWED_DTYPES[dtype_str]
    total = dtype.itemsize
    for d in shape:
        total *= d
        if total > max_batch_bytes:
            raise WireError("array %r of shape %s is larger than the %d-byte limit"
                            % (name, shape, max_batch_bytes))
    if not isinstance(rows_per_frame, int) or isinstance(rows_per_frame, bool) or rows_per_frame < 1:
        raise WireError("array %r has rows_per_frame %r" % (name, rows_per_frame))
    return ArraySpec(name, dtype, tuple(shape), rows_per_frame)


def _sample_array(header: dict, key: str, dtype: np.dtype) -> np.ndarray:
    raw = header.get(key)
    if not isinstance(raw, bytes) or len(raw) % dtype.itemsize:
        raise WireError("header field %r is not a packed %s array" % (key, dtype))
    return np.frombuffer(raw, dtype=dtype)


def decode_header(data: memoryview, max_batch_bytes: int) -> Tuple[dict, List[ArraySpec]]:
    """Unpack and validate a header; returns the map and the array specs."""
    if len(data) > MAX_HEADER_BYTES:
        raise WireError("header is %d bytes, more than %d" % (len(data), MAX_HEADER_BYTES))
    try:
        header = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=MAX_HEADER_BYTES, max_str_len=65536,
            max_array_len=100000, max_map_len=64, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError("header is not valid msgpack: %s" % exc) from None
    if not isinstance(header, dict):
        raise WireError("header is a %s, not a map" % type(header).__name__)
    version = header.get("zfeed")
    if version != WIRE_VERSION:
        raise WireError("wire format version %r, this side speaks version %d: "
                        "run the same zfeed release on server and trainer"
                        % (version, WIRE_VERSION))
    if header.get("kind") != KIND_BATCH:
        raise WireError("message kind %r is not %r" % (header.get("kind"), KIND_BATCH))
    if not isinstance(header.get("stream"), str) or not isinstance(header.get("seq"), int):
        raise WireError("header lacks a string 'stream' or an integer 'seq'")
    entries = header.get("arrays")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ARRAYS:
        raise WireError("header 'arrays' must list 1 to %d arrays" % MAX_ARRAYS)
    specs = [_parse_spec(entry, max_batch_bytes) for entry in entries]
    if len({s.name for s in specs}) != len(specs):
        raise WireError("array names repeat: %s" % [s.name for s in specs])
    total = sum(s.nbytes for s in specs)
    if total > max_batch_bytes:
        raise WireError("batch holds %d bytes, more than the %d-byte limit" % (total, max_batch_bytes))
    if "extra" in header and not isinstance(header["extra"], dict):
        raise WireError("header 'extra' is not a map")
    codec = header.get("codec")
    if codec is not None and codec not in CODECS:
        raise WireError("header 'codec' %r is not one of %s" % (codec, ", ".join(CODECS)))
    header["origin"] = _parse_origin(header.get("origin"))
    return header, specs


def decode_batch(frames: Sequence[object], max_batch_bytes: int) -> Batch:
    """Validate and view a received multipart message as a ``Batch`` (no copies,
    except that compressed frames are decompressed).

    ``frames`` are ``zmq.Frame`` objects or plain buffers. Raises ``WireError``
    on anything malformed; never reads past a frame.
    """
    if not frames:
        raise WireError("empty message")
    header_view = _buffer_of(frames[0])
    header, specs = decode_header(header_view, max_batch_bytes)
    indices = _sample_array(header, "index", _INDEX_DTYPE)
    epochs = _sample_array(header, "epoch", _EPOCH_DTYPE)
    if len(epochs) != len(indices):
        raise WireError("header has %d indices but %d epochs" % (len(indices), len(epochs)))
    batch_rows = header.get("batch_rows")
    if (not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1
            or len(indices) % batch_rows):
        raise WireError("header 'batch_rows' %r does not divide the message's %d samples"
                        % (batch_rows, len(indices)))
    if len(indices) > batch_rows and any(s.frame_count != 1 for s in specs):
        raise WireError("a message of several batches must hold each array in one frame")
    expected_frames = 1 + sum(s.frame_count for s in specs)
    if len(frames) != expected_frames:
        raise WireError("message has %d frames, its header describes %d"
                        % (len(frames), expected_frames))
    codec_name, codec = header.get("codec"), None
    wire_bytes = len(header_view)
    frames_by_array = []
    position = 1
    for spec in specs:
        if spec.shape[0] != len(indices):
            raise WireError("array %r has %d rows for %d samples"
                            % (spec.name, spec.shape[0], len(indices)))
        views = []
        for start, stop in spec.frame_rows():
            view = _buffer_of(frames[position])
            wire_bytes += len(view)
            expected = (stop - start) * spec.row_bytes
            if codec_name is not None and len(view) < expected:
                codec = codec or Codec(codec_name)
                view = codec.decompress(view, expected)
            elif len(view) != expected:
                raise WireError("frame %d of array %r is %d bytes, %s %s needs %d"
                                % (position, spec.name, len(view), spec.dtype,
                                   ((stop - start),) + spec.shape[1:], expected))
            views.append(view)
            position += 1
        frames_by_array.append(views)
    return Batch(header["stream"], header["seq"], specs, frames_by_array, indices, epochs,
                 header.get("extra", {}), keepalive=frames, wire_bytes=wire_bytes, batch_rows=batch_rows,
                 origin=header["origin"])
