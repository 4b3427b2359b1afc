"""An array of a batch as frames of a message, and back: ``ArraySpec`` and the frame functions.

``ArraySpec`` is the one description of a batch array, on both sides (the
server's layout and slots too): name, dtype (one of ``ALLOWED_DTYPES``),
shape with the rows first, and its split into frames of ``rows_per_frame``
rows, so that no frame exceeds ``MAX_FRAME_BYTES``. ``array_frames`` gives
the frames of an array without a copy; ``pack_frames`` compresses them.
These are part of the wire format (``wire``, which imports them and whose
docstring describes the message); nothing here knows the header.

Python 3.8 with numpy; nothing from ``server``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from client_layer.wire_errors import WireError

if TYPE_CHECKING:
    from client_layer.compression import Codec

# glibc serves allocations of 32 MiB and more with fresh pages every time,
# which makes big frames several times slower to receive; stay well below.
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Little-endian, fixed-size numeric dtypes only: never object, void or strings.
ALLOWED_DTYPES: Dict[str, np.dtype] = {
    np.dtype(name).str: np.dtype(name)
    for name in (
        "<f4", "<f8", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "|b1",
    )
}


class ArraySpec:
    """One array of a batch or message: name, dtype, shape (rows first) and its split into
    frames of ``rows_per_frame`` rows. The one description of a batch array, on both sides
    (the server's slots and layout too); ``array_spec`` makes a checked one."""

    __slots__ = ("name", "dtype", "shape", "rows_per_frame", "row_bytes")

    def __init__(self, name: str, dtype: np.dtype, shape: Tuple[int, ...], rows_per_frame: int):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.rows_per_frame = rows_per_frame
        # Bytes of one row, computed once: a trainer asks for it for every batch of every message.
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    @property
    def frame_count(self) -> int:
        if self.shape[0] == 0:
            return 1
        return math.ceil(self.shape[0] / self.rows_per_frame)

    @property
    def sample_shape(self) -> Tuple[int, ...]:
        return self.shape[1:]

    def with_rows(self, rows: int) -> "ArraySpec":
        """The spec of ``rows`` rows of this array (the same split into frames)."""
        return ArraySpec(self.name, self.dtype, (rows,) + self.shape[1:], self.rows_per_frame)

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



def buffer_of(frame: object) -> memoryview:
    """A received frame as one-dimensional bytes: ``zmq.Frame`` exposes ``.buffer``; bytes,
    bytearray and memoryview are buffers already."""
    buffer = getattr(frame, "buffer", frame)
    view = memoryview(buffer)  # type: ignore[arg-type]
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view
