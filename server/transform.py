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

import operator
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from client_layer.caffe_arithmetic import subtract_mean_and_scale

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


# One draw per sample: three uniforms in [0, 1) for the mirror coin, h_off and w_off.
DRAWS_PER_SAMPLE = 3


@dataclass(frozen=True)
class Crops:
    """Where to crop and whether to mirror each sample of a task, for images of one size:
    sample i is cropped to ``height`` x ``width`` at ``(h_offs[i], w_offs[i])`` and mirrored
    when ``mirrors[i]`` (int64, int64 and bool arrays, one entry per sample)."""

    height: int
    width: int
    h_offs: np.ndarray
    w_offs: np.ndarray
    mirrors: np.ndarray


def uses_draws(params: Optional[TransformParams]) -> bool:
    """Whether ``choose_crops`` reads the draws: a mirror coin, or a random crop (TRAIN).
    Without either, a task's draws may be an (N, 0) array, and nothing computes them."""
    return params is not None and (params.mirror or (params.crop_size > 0 and params.phase == TRAIN))


def choose_crops(params: TransformParams, height: int, width: int, draws: np.ndarray) -> Crops:
    """Crop windows and mirror flags of images of ``height`` x ``width``, one per row of ``draws``.

    ``draws`` holds ``DRAWS_PER_SAMPLE`` uniforms in [0, 1) per sample (no
    columns when not ``uses_draws(params)``). Raises ValueError when the crop
    does not fit the image.
    """
    count = len(draws)
    mirrors = draws[:, 0] < 0.5 if params.mirror else np.zeros(count, bool)
    crop = params.crop_size
    if not crop:
        return Crops(height, width, np.zeros(count, np.int64), np.zeros(count, np.int64), mirrors)
    if crop > height or crop > width:
        raise ValueError("crop_size %d is larger than the %dx%d image" % (crop, height, width))
    if params.phase == TRAIN:
        h_offs = _random_offsets(draws[:, 1], height - crop)
        w_offs = _random_offsets(draws[:, 2], width - crop)
    else:
        h_offs = np.full(count, (height - crop) // 2, np.int64)
        w_offs = np.full(count, (width - crop) // 2, np.int64)
    return Crops(crop, crop, h_offs, w_offs, mirrors)


def _random_offsets(uniforms: np.ndarray, largest: int) -> np.ndarray:
    """Offsets in 0..largest, uniform: the truncation of u * (largest + 1), as int() truncates."""
    return np.minimum((uniforms * (largest + 1)).astype(np.int64), largest)


def output_shape(params: TransformParams, channels: int, height: int, width: int) -> Tuple[int, int, int]:
    if params.crop_size:
        return channels, params.crop_size, params.crop_size
    return channels, height, width


def crop_into(image: np.ndarray, h_off: int, w_off: int, mirror: bool, out: np.ndarray,
              flip_buffer: Optional[np.ndarray] = None) -> None:
    """Write the crop of ``image`` at (``h_off``, ``w_off``) the size of ``out``, mirrored when
    ``mirror``, into ``out``, no arithmetic.

    ``flip_buffer``, an H x W x C uint8 array the shape of ``out``'s pixels,
    is where a decoded image's mirrored crop is put on its way: reusing one
    buffer, still in the cache, is cheaper than a new array every time.

    With ``finish_on_trainer``, this is the server's half of the transform:
    the pixels travel as they are and the trainer computes
    ``(x - mean) * scale`` with the function ``transform_into`` calls
    (client_layer/caffe_arithmetic.py), so bit for bit as it would.
    """
    rows = slice(h_off, h_off + out.shape[1])
    columns = slice(w_off, w_off + out.shape[2])
    if (_interleaved_uint8(image) and out.flags.c_contiguous
            and _split_into(image, rows, columns, mirror, out, flip_buffer)):
        return
    target = out[:, :, ::-1] if mirror else out
    target[...] = image[:, rows, columns]


def _interleaved_uint8(image: np.ndarray) -> bool:
    """A decoded image: a C x H x W view of H x W x C pixels (channels adjacent in memory)."""
    return image.dtype == np.uint8 and image.ndim == 3 and 1 < image.shape[0] <= 4 and image.strides[0] == 1


def _split_into(image: np.ndarray, rows: slice, columns: slice, mirror: bool, out: np.ndarray,
                flip_buffer: Optional[np.ndarray]) -> bool:
    """OpenCV's flip and split, writing each channel plane of ``out`` in place: a quarter of
    numpy's time for the strided copy. False (nothing promised) if OpenCV did not write in place."""
    pixels = image.transpose(1, 2, 0)[rows, columns]
    if mirror:
        pixels = cv2.flip(pixels, 1, flip_buffer)  # OpenCV allocates if it is None or does not fit
    planes = list(out)
    # OpenCV hands back the very arrays it was given when it wrote into them; comparing
    # identities costs well under a microsecond, data pointers (ctypes) about ten.
    return all(map(operator.is_, cv2.split(pixels, planes), planes))


def _windows(h_offs: np.ndarray, w_offs: np.ndarray, mirrors: np.ndarray, width: int):
    """(samples, h_off, w_off, mirror) for each distinct crop window of a block: ``samples``
    selects every sample with that window (a slice, an index array, or one index).
    Few distinct windows (centre crops, small images) are one gather each; else one per sample."""
    count = len(h_offs)
    keys = (h_offs * (width + 1) + w_offs) * 2 + mirrors
    distinct, members = np.unique(keys, return_inverse=True)
    if len(distinct) == 1:
        return [(slice(None), int(h_offs[0]), int(w_offs[0]), bool(mirrors[0]))] if count else []
    if len(distinct) * 4 <= count:
        groups = [np.flatnonzero(members == k) for k in range(len(distinct))]
        return [(group, int(h_offs[group[0]]), int(w_offs[group[0]]), bool(mirrors[group[0]])) for group in groups]
    return list(zip(range(count), h_offs.tolist(), w_offs.tolist(), mirrors.tolist()))


def gather_into(store: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = store[rows[i]]`` in one pass, without a gathered copy in between; every
    row must exist."""
    if out.dtype == store.dtype and out.flags.c_contiguous:
        np.take(store, rows, axis=0, out=out, mode="clip")  # mode "raise" would buffer ``out``
    else:
        out[...] = store[rows]


def crop_block_into(images: np.ndarray, h_offs: np.ndarray, w_offs: np.ndarray, mirrors: np.ndarray,
                    out: np.ndarray, image_rows: Optional[np.ndarray] = None) -> None:
    """``crop_into`` for a block: ``out[i]`` (N x C x h x w) is the crop of ``images[i]``
    (N x C x H x W), or of ``images[image_rows[i]]``, at ``(h_offs[i], w_offs[i])``,
    mirrored when ``mirrors[i]``."""
    height, width = out.shape[2:]
    for samples, h_off, w_off, mirror in _windows(h_offs, w_offs, mirrors, images.shape[3]):
        if image_rows is not None and isinstance(samples, slice) and not mirror and images.shape[2:] == (height, width):
            gather_into(images, image_rows, out)  # whole images, no mirror: one pass
            continue
        chosen = samples if image_rows is None else image_rows[samples]
        window = images[chosen, ..., h_off:h_off + height, w_off:w_off + width]
        out[samples] = window[..., ::-1] if mirror else window


def transform_block_into(images: np.ndarray, params: TransformParams, h_offs: np.ndarray, w_offs: np.ndarray,
                         mirrors: np.ndarray, out: np.ndarray, image_rows: Optional[np.ndarray] = None) -> None:
    """``transform_into`` for a block of images (N x C x H x W), or the images ``image_rows``
    of them, into ``out`` (N x C x h x w float32): the same float32 operations in the same
    order, so the same bits."""
    if image_rows is not None:
        images = images[image_rows]
    height, width = out.shape[2:]
    for samples, h_off, w_off, mirror in _windows(h_offs, w_offs, mirrors, images.shape[3]):
        rows, columns = slice(h_off, h_off + height), slice(w_off, w_off + width)
        gathered = isinstance(samples, np.ndarray)  # out[samples] would be a copy, not a view
        result = np.empty((len(samples),) + out.shape[1:], np.float32) if gathered else out[samples]
        _subtract_mean_and_scale(images[samples, ..., rows, columns], params, rows, columns,
                                 result[..., ::-1] if mirror else result)
        if gathered:
            out[samples] = result


def finish_on_trainer(params: TransformParams, image_dtype: np.dtype) -> bool:
    """True when the trainer can do the arithmetic exactly: uint8 pixels and no mean file
    (a mean file would have to travel with every batch, indexed at each crop)."""
    return np.dtype(image_dtype) == np.uint8 and not params.mean_is_full_size


def trainer_arithmetic(params: TransformParams) -> dict:
    """What the trainer needs to finish the transform: per-channel mean (or None) and scale."""
    mean = None if params.mean is None else [float(v) for v in params.mean.reshape(-1)]
    return {"mean": mean, "scale": float(np.float32(params.scale))}


def transform_into(image: np.ndarray, params: TransformParams, h_off: int, w_off: int, mirror: bool,
                   out: np.ndarray) -> None:
    """Write the transformed crop of ``image`` (C x H x W) at (``h_off``, ``w_off``), mirrored
    when ``mirror``, into ``out`` (C x crop_h x crop_w, float).

    ``out`` may be a view into a larger batch buffer; it is written once.
    """
    rows, columns = slice(h_off, h_off + out.shape[1]), slice(w_off, w_off + out.shape[2])
    _subtract_mean_and_scale(image[:, rows, columns], params, rows, columns, out[:, :, ::-1] if mirror else out)


def _subtract_mean_and_scale(source: np.ndarray, params: TransformParams, rows: slice, columns: slice,
                             target: np.ndarray) -> None:
    """Caffe's arithmetic (``caffe_arithmetic``, shared with the trainer's layer) for one image or a
    block of them, the mean file taken at the source pixels ``rows`` x ``columns``."""
    mean = params.mean[:, rows, columns] if params.mean_is_full_size else params.mean
    subtract_mean_and_scale(source, mean, params.scale, target)
