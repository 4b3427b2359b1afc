"""What one batch holds, and how one sample is written into its row.

The layout is fixed at start-up from the first sample: every array the
source yields becomes a float32 batch array (Caffe's blobs are float), named
as the source names it. For image sources the ``data`` array goes through
Caffe's transform; every other array (``label``, HDF5 datasets) is copied as
it is. A later sample whose arrays do not fit the layout is refused with a
message that says what differs.

With ``pixels_on_wire`` and a transform the trainer can finish exactly
(``transform.finish_on_trainer``), ``data`` holds the cropped, mirrored
uint8 pixels instead: a quarter of the bytes on the wire and less work
here, and ``wire_extra`` tells the trainer the mean and scale to apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from server.transform import (TransformParams, choose_crop, crop_into, finish_on_trainer, output_shape,
                              trainer_arithmetic, transform_into)

TRANSFORMED = "data"
BLOB_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True)
class ArrayLayout:
    name: str
    sample_shape: Tuple[int, ...]
    dtype: np.dtype = BLOB_DTYPE


class BatchLayout:
    """The arrays of a batch; ``transform`` applies to ``data`` when it is set."""

    def __init__(self, arrays: List[ArrayLayout], transform: Optional[TransformParams],
                 pixels_on_wire: bool = False):
        self.arrays = arrays
        self.transform = transform
        self.pixels_on_wire = pixels_on_wire

    @classmethod
    def from_sample(cls, sample: Dict[str, np.ndarray], transform: Optional[TransformParams],
                    pixels_on_wire: bool = False) -> "BatchLayout":
        """``pixels_on_wire``: send uint8 pixels when the trainer can finish the transform exactly."""
        arrays = []
        pixels = False
        for name, value in sample.items():
            shape = tuple(int(d) for d in np.shape(value))
            dtype = BLOB_DTYPE
            if transform is not None and name == TRANSFORMED:
                shape = output_shape(transform, *shape)
                if pixels_on_wire and finish_on_trainer(transform, np.asarray(value).dtype):
                    dtype, pixels = np.dtype(np.uint8), True
            arrays.append(ArrayLayout(name, shape, dtype))
        return cls(arrays, transform, pixels)

    def wire_extra(self) -> Optional[dict]:
        """Header ``extra`` telling the trainer how to finish the transform, if it must."""
        if not self.pixels_on_wire:
            return None
        return {"finish": {TRANSFORMED: trainer_arithmetic(self.transform)}}

    def batch_arrays(self, batch_size: int) -> List[Tuple[str, np.dtype, Tuple[int, ...]]]:
        """(name, dtype, batch shape) of every array, in order."""
        return [(a.name, a.dtype, (batch_size,) + a.sample_shape) for a in self.arrays]

    def write_sample(self, sample: Dict[str, np.ndarray], draw: np.ndarray,
                     batch: Dict[str, np.ndarray], row: int) -> None:
        """Write ``sample`` into row ``row`` of ``batch``; ValueError if it does not fit."""
        if len(sample) != len(self.arrays):
            raise ValueError("it has arrays %s, the batch %s"
                             % (sorted(sample), sorted(a.name for a in self.arrays)))
        for array in self.arrays:
            value = sample.get(array.name)
            if value is None:
                raise ValueError("it has no %r array" % array.name)
            if self.transform is not None and array.name == TRANSFORMED:
                self._write_transformed(value, draw, batch[array.name][row])
            elif np.shape(value) != array.sample_shape:
                raise ValueError("its %r is %s, the batch holds %s"
                                 % (array.name, np.shape(value), array.sample_shape))
            else:
                batch[array.name][row] = value

    def _write_transformed(self, image: np.ndarray, draw: np.ndarray, target: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[0] != target.shape[0]:
            raise ValueError("it has %s channels, the batch %d"
                             % (image.shape[0] if image.ndim == 3 else "no", target.shape[0]))
        choice = choose_crop(self.transform, image.shape[1], image.shape[2], draw)
        if (choice.height, choice.width) != target.shape[1:]:
            raise ValueError("it is %dx%d, the batch holds %dx%d images (set a crop size or resize)"
                             % (image.shape[1], image.shape[2], target.shape[1], target.shape[2]))
        if self.pixels_on_wire:
            if image.dtype != np.uint8:
                raise ValueError("it has %s pixels; this stream sends uint8 pixels" % image.dtype)
            crop_into(image, choice, target)
        else:
            transform_into(image, self.transform, choice, target)
