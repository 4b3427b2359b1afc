"""Caffe's ``transform_param``, as ``data_transformer.cpp`` applies it.

Pure functions over arrays; randomness comes in as explicit draws so that the
same draw always gives the same output, whoever computes it.

For an input image ``x`` (C x H x W, BGR, any numeric dtype) Caffe computes

    out[c, h, w'] = (x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale

with ``w' = crop_w - 1 - w`` when mirrored and ``w`` otherwise. The mean file
is indexed at the source pixel (it is not mirrored); mean values are one per
channel. Crop offsets are random in TRAIN and centred in TEST; the mirror
coin is tossed in both phases when ``mirror`` is set. Arithmetic is float32,
mean subtracted before scaling, as Caffe's ``Dtype`` float does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

TRAIN = "train"
TEST = "test"


@dataclass(frozen=True)
class TransformParams:
    """Validated ``transform_param``. ``mean`` is (C,H,W) for a mean file,
    (C,1,1) for mean values, or None."""

    phase: str = TRAIN
    crop_size: int = 0
    mirror: bool = False
    scale: float = 1.0
    mean: Optional[np.ndarray] = None

    @property
    def mean_is_full_size(self) -> bool:
        return self.mean is not None and self.mean.shape[1:] != (1, 1)


@dataclass(frozen=True)
class CropChoice:
    """Where to crop and whether to mirror one sample."""

    h_off: int
    w_off: int
    height: int
    width: int
    mirror: bool


# One draw per sample: three uniforms in [0, 1) for the mirror coin, h_off and w_off.
DRAWS_PER_SAMPLE = 3


def choose_crop(params: TransformParams, height: int, width: int, draw: np.ndarray) -> CropChoice:
    """Crop window and mirror flag for an image of ``height`` x ``width``.

    ``draw`` holds ``DRAWS_PER_SAMPLE`` uniforms in [0, 1). Raises ValueError
    when the crop does not fit the image.
    """
    mirror = bool(params.mirror and draw[0] < 0.5)
    crop = params.crop_size
    if not crop:
        return CropChoice(0, 0, height, width, mirror)
    if crop > height or crop > width:
        raise ValueError("crop_size %d is larger than the %dx%d image" % (crop, height, width))
    if params.phase == TRAIN:
        h_off = min(int(draw[1] * (height - crop + 1)), height - crop)
        w_off = min(int(draw[2] * (width - crop + 1)), width - crop)
    else:
        h_off = (height - crop) // 2
        w_off = (width - crop) // 2
    return CropChoice(h_off, w_off, crop, crop, mirror)


def output_shape(params: TransformParams, channels: int, height: int, width: int) -> Tuple[int, int, int]:
    if params.crop_size:
        return channels, params.crop_size, params.crop_size
    return channels, height, width


def crop_into(image: np.ndarray, choice: CropChoice, out: np.ndarray) -> None:
    """Write the crop (mirrored when chosen) of ``image`` into ``out``, no arithmetic.

    With ``finish_on_trainer``, this is the server's half of the transform:
    the pixels travel as they are and the trainer computes
    ``(x - mean) * scale`` (client_layer/wire.py), bit for bit as
    ``transform_into`` would.
    """
    rows = slice(choice.h_off, choice.h_off + choice.height)
    columns = slice(choice.w_off, choice.w_off + choice.width)
    if _interleaved_uint8(image) and out.flags.c_contiguous and _split_into(image, rows, columns, choice, out):
        return
    target = out[:, :, ::-1] if choice.mirror else out
    target[...] = image[:, rows, columns]


def _interleaved_uint8(image: np.ndarray) -> bool:
    """A decoded image: a C x H x W view of H x W x C pixels (channels adjacent in memory)."""
    return image.dtype == np.uint8 and image.ndim == 3 and 1 < image.shape[0] <= 4 and image.strides[0] == 1


def _split_into(image: np.ndarray, rows: slice, columns: slice, choice: CropChoice, out: np.ndarray) -> bool:
    """OpenCV's flip and split, writing each channel plane of ``out`` in place: a quarter of
    numpy's time for the strided copy. False (nothing promised) if OpenCV did not write in place."""
    pixels = image.transpose(1, 2, 0)[rows, columns]
    if choice.mirror:
        pixels = cv2.flip(pixels, 1)
    planes = list(out)
    # OpenCV hands back the very arrays it was given when it wrote into them; comparing
    # identities costs well under a microsecond, data pointers (ctypes) about ten.
    return all(written is plane for written, plane in zip(cv2.split(pixels, planes), planes))


def finish_on_trainer(params: TransformParams, image_dtype: np.dtype) -> bool:
    """True when the trainer can do the arithmetic exactly: uint8 pixels and no mean file
    (a mean file would have to travel with every batch, indexed at each crop)."""
    return np.dtype(image_dtype) == np.uint8 and not params.mean_is_full_size


def trainer_arithmetic(params: TransformParams) -> dict:
    """What the trainer needs to finish the transform: per-channel mean (or None) and scale."""
    mean = None if params.mean is None else [float(v) for v in params.mean.reshape(-1)]
    return {"mean": mean, "scale": float(np.float32(params.scale))}


def transform_into(image: np.ndarray, params: TransformParams, choice: CropChoice,
                   out: np.ndarray) -> None:
    """Write the transformed ``image`` (C x H x W) into ``out`` (C x crop_h x crop_w, float).

    ``out`` may be a view into a larger batch buffer; it is written once.
    """
    c0, c1 = choice.h_off, choice.h_off + choice.height
    r0, r1 = choice.w_off, choice.w_off + choice.width
    source = image[:, c0:c1, r0:r1]
    target = out[:, :, ::-1] if choice.mirror else out
    if params.mean is None:
        np.multiply(source, np.float32(params.scale), out=target, dtype=np.float32, casting="unsafe")
        return
    mean = params.mean[:, c0:c1, r0:r1] if params.mean_is_full_size else params.mean
    np.subtract(source, mean, out=target, dtype=np.float32, casting="unsafe")
    if params.scale != 1.0:
        np.multiply(target, np.float32(params.scale), out=target)
