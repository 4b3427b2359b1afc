"""Image bytes to C x H x W uint8 arrays in BGR order, as Caffe's OpenCV path reads them."""

from __future__ import annotations

import cv2
import numpy as np

# Caffe: force_color -> CV_LOAD_IMAGE_COLOR, force_gray -> GRAYSCALE, else the file's own channels.
COLOR_NATIVE = "native"
COLOR_BGR = "color"
COLOR_GRAY = "gray"

_IMREAD_FLAGS = {
    COLOR_NATIVE: cv2.IMREAD_UNCHANGED,
    COLOR_BGR: cv2.IMREAD_COLOR,
    COLOR_GRAY: cv2.IMREAD_GRAYSCALE,
}

# OpenCV's own thread pool only competes with the loader processes.
cv2.setNumThreads(1)


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """A C x H x W view of an OpenCV H x W (x C) image."""
    if image.ndim == 2:
        return image[np.newaxis]
    return image.transpose(2, 0, 1)


def decode_image(data: bytes, color: str = COLOR_NATIVE) -> np.ndarray:
    """Decode JPEG/PNG bytes to a C x H x W uint8 view. Raises ValueError if undecodable."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS[color])
    if image is None:
        raise ValueError("cannot decode image (%d bytes): truncated or not an image" % len(data))
    if image.dtype != np.uint8:
        raise ValueError("image has %s pixels; Caffe reads 8-bit images" % image.dtype)
    if image.ndim == 3 and image.shape[2] == 4:
        # Caffe's native read keeps alpha; it never reaches a 3-channel net unnoticed.
        raise ValueError("image has an alpha channel; use force_color to drop it")
    return hwc_to_chw(image)


def read_image_file(path: str, color: str = COLOR_BGR, resize_hw: tuple = (0, 0)) -> np.ndarray:
    """Read an image file as Caffe's ReadImageToCVMat does (optional INTER_LINEAR resize)."""
    image = cv2.imread(path, _IMREAD_FLAGS[color])
    if image is None:
        raise ValueError("cannot read image %s: missing, truncated or not an image" % path)
    height, width = resize_hw
    if height and width:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return hwc_to_chw(image)
