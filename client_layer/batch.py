"""``Batch``: a received message as the trainer uses it, views of its frames and no copies.

``wire.decode_batch`` checks a message and makes its ``Batch``; ``split``
cuts a message of several batches into its batches; ``array`` and
``copy_into`` give each array as Caffe's blob holds it, finishing uint8
pixels into float32 with Caffe's arithmetic (``caffe_arithmetic``) when the
header says so.

Python 3.8 with numpy; nothing from ``server``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from client_layer.caffe_arithmetic import finish_pixels

if TYPE_CHECKING:
    from client_layer.frames import ArraySpec
    from client_layer.wire import StreamOrigin


class Batch:
    """A decoded batch. Arrays are views of the received frames, not copies
    (of the decompressed frames, for frames that came compressed).

    Keep the Batch alive while any array obtained from it is in use: the
    frames' memory belongs to it.
    """

    def __init__(self, stream: str, seq: int, specs: List[ArraySpec],
                 frames_by_array: List[List[memoryview]], indices: np.ndarray,
                 epochs: np.ndarray, extra: dict, keepalive: Sequence[object], wire_bytes: int = 0,
                 batch_rows: Optional[int] = None, finish: Optional[Dict[str, tuple]] = None,
                 origin: Optional["StreamOrigin"] = None):
        """``finish``: {array name: (mean (C,1,1) float32 or None, scale)} for uint8 pixels this side
        finishes into float32 (the header's ``extra.finish``, validated by ``wire.decode_batch``)."""
        self.stream = stream
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
        self._finish = finish or {}
        self.origin = origin  # where the message comes from (wire.StreamOrigin), None from a bare sender

    def split(self) -> List["Batch"]:
        """The batches this message carries, in order: itself when it is one batch, else
        views of ``batch_rows`` rows each (every array is one frame then, see decode_batch)."""
        count = self.size // self.batch_rows if self.batch_rows else 1
        if count <= 1:
            return [self]
        rows = self.batch_rows
        # Every part has the same specs: made once per message, not once per part.
        specs = [spec.with_rows(rows) for spec in self.specs]
        spec_by_name = {spec.name: spec for spec in specs}
        frames = [(spec.name, self._frames[spec.name][0], rows * spec.row_bytes) for spec in self.specs]
        parts = []
        for number in range(count):
            part = object.__new__(Batch)
            part.stream, part.seq, part.extra, part.batch_rows = self.stream, self.seq + number, self.extra, rows
            part.wire_bytes = self.wire_bytes * (number + 1) // count - self.wire_bytes * number // count
            part.indices = self.indices[number * rows:(number + 1) * rows]
            part.epochs = self.epochs[number * rows:(number + 1) * rows]
            part.specs = specs
            part._frames = {name: [frame[number * step:(number + 1) * step]] for name, frame, step in frames}
            part._spec_by_name = spec_by_name
            part._keepalive = self._keepalive
            part._finish = self._finish
            part.origin = self.origin
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
        frames = self._frames[name]
        if len(frames) == 1:  # every batch of a message of several, and most single batches
            return [(0, np.frombuffer(frames[0], dtype=spec.dtype).reshape(spec.shape))]
        return [(start, np.frombuffer(view, dtype=spec.dtype).reshape((stop - start,) + spec.shape[1:]))
                for (start, stop), view in zip(spec.frame_rows(), self._frames[name])]

    def _chunks(self, name: str, out: np.ndarray):
        for start, chunk in self.chunks(name):
            yield chunk, out[start:start + len(chunk)]

    def _copy_frames(self, name: str, out: np.ndarray) -> None:
        for chunk, target in self._chunks(name, out):
            target[...] = chunk
