"""The zfeed wire format: the one module that owns the message layout and its header.

Both sides import it, and use the format through it. One array as frames
(``ArraySpec``, the one description of a batch array; the dtype whitelist;
the frame limit; ``array_frames``, ``pack_frames``) is defined in ``frames``
and is part of this module's interface (``wire.ArraySpec``). The other
helpers hold no part of the contract: ``compression`` (the codecs a header
may name), ``batch`` (a decoded message as the trainer uses it) and
``caffe_arithmetic`` (the ``(x - mean) * scale`` both sides compute).

A message carries one batch, or several consecutive batches of small
samples (fewer, larger messages cost less per batch on both sides)::

    frame 0      msgpack header (a map, see ``encode_header``)
    frames 1..   raw C-contiguous bytes of each array, in header order; an array
                 larger than ``MAX_FRAME_BYTES`` is split along its first axis
                 into frames of ``rows_per_frame`` rows each

The header names the format version, the message kind, the stream (which
server), the origin (``StreamOrigin``: which shard of which data, from which
server process, and whether that process resumed a saved stream), the
sequence number of its first batch, the rows of one batch
(``batch_rows``), for every array its name, dtype, shape and rows per frame,
and for every sample its dataset index and its epoch. A message of several
batches (more rows than ``batch_rows``) has every array in one frame, and
``Batch.split`` cuts it, without copies, into batches ``seq``, ``seq + 1``, ... Its optional
``extra`` map may say, under ``finish``, that an array holds uint8 pixels
whose Caffe transform the receiver completes: ``{"data": {"mean": [per
channel] or None, "scale": s}}``. ``Batch.array`` and ``Batch.copy_into``
then deliver ``(x - mean) * scale`` in float32 with the function the
server's float32 path calls (``caffe_arithmetic``): bit-identical by
construction.

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

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import msgpack
import numpy as np

from client_layer.batch import Batch
from client_layer.compression import CODECS, Codec
from client_layer.frames import (ALLOWED_DTYPES, MAX_FRAME_BYTES, ArraySpec, array_frames, array_spec,
                                 buffer_of, pack_frames)
from client_layer.wire_errors import WireError

WIRE_VERSION = 4  # 4: the header's "origin"
KIND_BATCH = "batch"

# Headers are a few hundred bytes plus 12 bytes per sample.
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_ARRAYS = 64
MAX_NDIM = 8

_INDEX_DTYPE = np.dtype("<i8")
_EPOCH_DTYPE = np.dtype("<i4")


class StreamOrigin(NamedTuple):
    """Where a message comes from: a server process (``server``, random per process), serving
    shard ``shard_index`` of ``shard_count`` of ``samples`` samples in the order of ``seed``;
    ``resumed``: that process continues a stream from its ``--state-dir``, so a batch it sends
    may be one a trainer already has (client_layer/repeats.py)."""

    server: str
    shard_index: int
    shard_count: int
    seed: int
    samples: int
    resumed: bool = False


def _parse_origin(value: object) -> Optional[StreamOrigin]:
    if value is None:
        return None
    fields = value if isinstance(value, dict) else {}
    server, shard, seed, samples = (fields.get(key) for key in ("server", "shard", "seed", "samples"))
    resumed = fields.get("resumed", False)  # absent from servers before it existed
    if not (isinstance(server, str) and 0 < len(server) <= 64 and isinstance(shard, list) and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard + [seed, samples])
            and 0 <= shard[0] < shard[1] and seed >= 0 and samples >= 0 and isinstance(resumed, bool)):
        raise WireError("header 'origin' is not {server: id, shard: [i, n], seed: s, samples: n, resumed: bool}: %r"
                        % (value,))
    return StreamOrigin(server, shard[0], shard[1], seed, samples, resumed)


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
                            "seed": origin.seed, "samples": origin.samples, "resumed": origin.resumed}
    return msgpack.packb(header, use_bin_type=True)


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
    header_view = buffer_of(frames[0])
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
            view = buffer_of(frames[position])
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
    extra = header.get("extra", {})
    return Batch(header["stream"], header["seq"], specs, frames_by_array, indices, epochs, extra,
                 keepalive=frames, wire_bytes=wire_bytes, batch_rows=batch_rows, origin=header["origin"],
                 finish=_parse_finish(extra.get("finish"), {spec.name: spec for spec in specs}))
