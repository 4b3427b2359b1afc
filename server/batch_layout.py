"""What one batch holds, and how a task's samples are written into their rows.

The layout is fixed at start-up from the first sample: every array the
source yields becomes a float32 batch array (Caffe's blobs are float), named
as the source names it. For image sources the ``data`` array goes through
Caffe's transform; every other array (``label``, HDF5 datasets) is copied as
it is. A later sample whose arrays do not fit the layout is refused with a
message that says what differs. Each array is described by the wire's
``ArraySpec``, the one description of a batch array on both sides.


With ``pixels_on_wire`` and a transform the trainer can finish exactly
(``transform.finish_on_trainer``), ``data`` holds the cropped, mirrored
uint8 pixels instead: a quarter of the bytes on the wire and less work
here, and ``wire_extra`` tells the trainer the mean and scale to apply.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from client_layer import wire
from server.sources.base import consecutive_slice
from server.transform import (Crops, TransformParams, choose_crops, crop_block_into, crop_into, finish_on_trainer,
                              gather_into, output_shape, trainer_arithmetic, transform_block_into, transform_into)

TRANSFORMED = "data"
BLOB_DTYPE = np.dtype(np.float32)


class BatchLayout:
    """The arrays of a batch; ``transform`` applies to ``data`` when it is set.

    ``arrays`` are the specs of a batch of one sample (``batch_specs`` gives them for any size).
    """

    def __init__(self, arrays: List[wire.ArraySpec], transform: Optional[TransformParams],
                 pixels_on_wire: bool = False):
        self.arrays = arrays
        self.transform = transform
        self.pixels_on_wire = pixels_on_wire

    @classmethod
    def from_sample(cls, sample: Dict[str, np.ndarray], transform: Optional[TransformParams],
                    pixels_on_wire: bool = False) -> "BatchLayout":
        """``pixels_on_wire``: send uint8 pixels when the trainer can finish the transform exactly.
        WireError when a sample could not travel (one row larger than a frame)."""
        arrays = []
        pixels = False
        for name, value in sample.items():
            shape = tuple(int(d) for d in np.shape(value))
            dtype = BLOB_DTYPE
            if transform is not None and name == TRANSFORMED:
                shape = output_shape(transform, *shape)
                if pixels_on_wire and finish_on_trainer(transform, np.asarray(value).dtype):
                    dtype, pixels = np.dtype(np.uint8), True
            arrays.append(wire.array_spec(name, dtype, (1,) + shape))
        return cls(arrays, transform, pixels)

    def wire_extra(self) -> Optional[dict]:
        """Header ``extra`` telling the trainer how to finish the transform, if it must."""
        if not self.pixels_on_wire:
            return None
        return {"finish": {TRANSFORMED: trainer_arithmetic(self.transform)}}

    def batch_specs(self, batch_size: int) -> List[wire.ArraySpec]:
        """The spec of every array of a batch of ``batch_size`` rows, in order."""
        return [a.with_rows(batch_size) for a in self.arrays]

    def zeros(self, batch_size: int) -> Dict[str, np.ndarray]:
        """A batch of ``batch_size`` rows of zeros, each array by name."""
        return {s.name: np.zeros(s.shape, s.dtype) for s in self.batch_specs(batch_size)}


# How RowWriter writes each array of a sample.
_IMAGE, _SCALAR, _ROW = "image", "scalar", "row"


class RowWriter:
    """Writes the samples of one task into their rows of ``batch``.

    ``write_block(positions, rows, arrays)`` writes a block of samples read
    together (``Source.read_many``) at once, vectorised over the block.
    ``write(position, row, sample)`` writes the task's sample number ``position``
    (its row of ``draws``) into batch row ``row``. It checks the sample against
    the layout first, so a sample that does not fit is refused alone
    (ValueError) and writes nothing that ``finish`` would keep. The crops of
    the whole task are chosen at once per image size (``choose_crops``).
    Arrays of scalar shape (labels) are gathered, and ``finish`` writes each
    of them in one assignment; every value is cast on its own, as a row
    assignment casts it.
    """

    def __init__(self, layout: BatchLayout, batch: Dict[str, np.ndarray], draws: np.ndarray):
        self.layout = layout
        self.batch = batch
        self.draws = draws
        self._kinds = [(a.name, _kind(layout, a), a.sample_shape) for a in layout.arrays]
        self._scalars: Dict[str, list] = {name: [] for name, kind, _ in self._kinds if kind == _SCALAR}
        self._rows: List[int] = []
        self._crops: Dict[Tuple[int, int], Crops] = {}
        self._flip_buffer = _flip_buffer(layout)

    def write(self, position: int, row: int, sample: Dict[str, np.ndarray]) -> None:
        """Write ``sample`` into row ``row``; ValueError if it does not fit."""
        if len(sample) != len(self._kinds):
            raise ValueError("it has arrays %s, the batch %s"
                             % (sorted(sample), sorted(name for name, _, _ in self._kinds)))
        scalars = []
        for name, kind, shape in self._kinds:
            value = sample.get(name)
            if value is None:
                raise ValueError("it has no %r array" % name)
            if kind == _IMAGE:
                self._write_image(position, value, self.batch[name][row])
            elif np.shape(value) != shape:
                raise ValueError("its %r is %s, the batch holds %s" % (name, np.shape(value), shape))
            elif kind == _SCALAR:
                scalars.append(value)
            else:
                self.batch[name][row] = value
        self._rows.append(row)
        for values, value in zip(self._scalars.values(), scalars):
            values.append(value)

    def write_block(self, positions: np.ndarray, rows: np.ndarray, arrays: Dict[str, np.ndarray],
                    source_rows: Optional[np.ndarray] = None) -> None:
        """Write the block of samples ``positions`` of the task into batch rows ``rows``;
        ValueError, having written nothing, if the block does not fit the layout. With
        ``source_rows`` (``SampleBlock.rows``), sample i is row ``source_rows[i]`` of each array."""
        names = [name for name, _, _ in self._kinds]
        if sorted(arrays) != sorted(names):
            raise ValueError("it has arrays %s, the batch %s" % (sorted(arrays), sorted(names)))
        for name, kind, shape in self._kinds:
            value = arrays[name]
            if source_rows is None and len(value) != len(positions):
                raise ValueError("its %r has %d rows for %d samples" % (name, len(value), len(positions)))
            if kind == _IMAGE:
                self._check_image_block(value, self.batch[name].shape[1:])
            elif value.shape[1:] != shape:
                raise ValueError("its %r is %s per sample, the batch holds %s" % (name, value.shape[1:], shape))
        chosen = consecutive_slice(rows)
        contiguous = isinstance(chosen, slice)
        for name, kind, _ in self._kinds:
            target = self.batch[name]
            # Consecutive rows are written in place; scattered ones through a block of their own.
            out = target[chosen] if contiguous else np.empty((len(rows),) + target.shape[1:], target.dtype)
            if kind == _IMAGE:
                self._image_block_into(positions, arrays[name], out, source_rows)
            elif source_rows is None:
                out[...] = arrays[name]
            else:
                gather_into(arrays[name], source_rows, out)
            if not contiguous:
                target[rows] = out

    def _check_image_block(self, images: np.ndarray, target_shape: Tuple[int, ...]) -> None:
        if images.ndim != 4 or images.shape[1] != target_shape[0]:
            raise ValueError("its images are %s, the batch holds %s" % (images.shape[1:], target_shape))
        crops = self._crops_for(images.shape[2], images.shape[3])
        if (crops.height, crops.width) != target_shape[1:]:
            raise ValueError("its images are %dx%d, the batch holds %dx%d"
                             % (images.shape[2], images.shape[3], target_shape[1], target_shape[2]))
        if self.layout.pixels_on_wire and images.dtype != np.uint8:
            raise ValueError("it has %s pixels; this stream sends uint8 pixels" % images.dtype)

    def _image_block_into(self, positions: np.ndarray, images: np.ndarray, out: np.ndarray,
                          image_rows: Optional[np.ndarray]) -> None:
        """The block's images (``images``, or the rows ``image_rows`` of it) cropped and mirrored
        (uint8 pixels on the wire) or transformed."""
        crops = self._crops_for(images.shape[2], images.shape[3])
        h_offs, w_offs, mirrors = crops.h_offs[positions], crops.w_offs[positions], crops.mirrors[positions]
        if self.layout.pixels_on_wire:
            crop_block_into(images, h_offs, w_offs, mirrors, out, image_rows)
        else:
            transform_block_into(images, self.layout.transform, h_offs, w_offs, mirrors, out, image_rows)

    def finish(self) -> None:
        """Write the gathered arrays of scalar shape into the rows written."""
        rows = np.array(self._rows, dtype=np.int64)
        for name, values in self._scalars.items():
            target = self.batch[name]
            target[rows] = np.array(values, dtype=target.dtype)

    def _write_image(self, position: int, image: np.ndarray, target: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[0] != target.shape[0]:
            raise ValueError("it has %s channels, the batch %d"
                             % (image.shape[0] if image.ndim == 3 else "no", target.shape[0]))
        crops = self._crops_for(image.shape[1], image.shape[2])
        if (crops.height, crops.width) != target.shape[1:]:
            raise ValueError("it is %dx%d, the batch holds %dx%d images (set a crop size or resize)"
                             % (image.shape[1], image.shape[2], target.shape[1], target.shape[2]))
        h_off, w_off, mirror = int(crops.h_offs[position]), int(crops.w_offs[position]), bool(crops.mirrors[position])
        if self.layout.pixels_on_wire:
            if image.dtype != np.uint8:
                raise ValueError("it has %s pixels; this stream sends uint8 pixels" % image.dtype)
            crop_into(image, h_off, w_off, mirror, target, self._flip_buffer)
        else:
            transform_into(image, self.layout.transform, h_off, w_off, mirror, target)

    def _crops_for(self, height: int, width: int) -> Crops:
        """The task's crops for images of this size, chosen once (ValueError if the crop does not fit)."""
        crops = self._crops.get((height, width))
        if crops is None:
            crops = self._crops[height, width] = choose_crops(self.layout.transform, height, width, self.draws)
        return crops


def _flip_buffer(layout: BatchLayout) -> Optional[np.ndarray]:
    """Where ``crop_into`` mirrors this layout's uint8 pixels on their way into the batch."""
    if not (layout.pixels_on_wire and layout.transform.mirror):
        return None
    channels, height, width = next(a.sample_shape for a in layout.arrays if a.name == TRANSFORMED)
    return np.empty((height, width, channels), np.uint8)


def _kind(layout: BatchLayout, array: wire.ArraySpec) -> str:
    if layout.transform is not None and array.name == TRANSFORMED:
        return _IMAGE
    return _SCALAR if array.sample_shape == () else _ROW
