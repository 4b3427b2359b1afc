"""Image bytes to C x H x W uint8 arrays in BGR order, as Caffe's OpenCV path reads them.

NOTE [ JPEGs through simplejpeg ]
Caffe decodes with OpenCV, so the pixels zfeed serves are OpenCV's. Most
JPEGs go to simplejpeg instead, about 1.2 times as fast (bench/decoders.py),
because there the pixels are the same: both wheels decode with the same
libjpeg-turbo (3.1.2, accurate DCT, fancy upsampling) and OpenCV adds nothing
of its own. A JPEG goes to simplejpeg only when its markers say 8-bit,
Huffman-coded (baseline, extended or progressive), one or three components
(gray, YCbCr or RGB) and, for ``color`` and ``gray``, no APP1 Exif segment:
OpenCV turns those images as their orientation tag says
(``IMREAD_UNCHANGED`` does not, so ``native`` ignores Exif). Everything else
goes to OpenCV as before: PNG and other formats, CMYK JPEGs (OpenCV
converts them itself), arithmetic coding, lossless and 12-bit JPEGs, and
any JPEG that simplejpeg refuses (it raises on what libjpeg only warns
about, such as truncated data). tests/test_decode.py checks the pixels against
``cv2.imdecode`` over a corpus of every kind, under each colour mode.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import simplejpeg

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

_SOI = b"\xff\xd8"
_SOS = 0xDA
_APP1 = 0xE1
_EXIF = b"Exif\x00\x00"
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC). Of these, simplejpeg
# gets baseline (C0), extended sequential (C1) and progressive (C2), all Huffman-coded.
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HUFFMAN_FRAMES = frozenset((0xC0, 0xC1, 0xC2))


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """A C x H x W view of an OpenCV H x W (x C) image."""
    if image.ndim == 2:
        return image[np.newaxis]
    return image.transpose(2, 0, 1)


def simplejpeg_colorspace(data: bytes, color: str) -> Optional[str]:
    """The colorspace to ask simplejpeg for (``BGR`` or ``GRAY``) when it decodes ``data`` to
    OpenCV's pixels under ``color``, else None (NOTE [ JPEGs through simplejpeg ])."""
    components = _huffman_jpeg_components(data, exif_turns=color != COLOR_NATIVE)
    if components is None:
        return None
    if color == COLOR_GRAY or (color == COLOR_NATIVE and components == 1):
        return "GRAY"
    return "BGR"


def _huffman_jpeg_components(data: bytes, exif_turns: bool) -> Optional[int]:
    """Components (1 or 3) of an 8-bit Huffman-coded JPEG, from its markers up to the scan;
    None for anything else, and for a JPEG with an Exif segment when ``exif_turns``."""
    if data[:2] != _SOI:
        return None
    components = None
    position, end = 2, len(data) - 4
    while position <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker == _SOS:
            return components
        if marker in _FRAMES:
            frame = data[position + 4:position + 10]  # precision, height, width, components
            if marker not in _HUFFMAN_FRAMES or len(frame) < 6 or frame[0] != 8 or frame[5] not in (1, 3):
                return None
            components = frame[5]
        elif marker == _APP1 and exif_turns and data[position + 4:position + 10] == _EXIF:
            return None
        position += 2 + ((data[position + 2] << 8) | data[position + 3])
    return None


def _decode(data: bytes, color: str) -> Optional[np.ndarray]:
    """``data`` decoded as ``cv2.imdecode`` decodes it under ``color``: None if undecodable."""
    if not data:
        return None  # OpenCV asserts on an empty buffer
    colorspace = simplejpeg_colorspace(data, color)
    if colorspace is not None:
        try:
            image = simplejpeg.decode_jpeg(data, colorspace)
        except ValueError:
            pass  # refused (corrupt, truncated, unsupported): OpenCV decides what it is
        else:
            return image[:, :, 0] if colorspace == "GRAY" else image
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS[color])


def decode_image(data: bytes, color: str = COLOR_NATIVE) -> np.ndarray:
    """Decode JPEG/PNG bytes to a C x H x W uint8 view. Raises ValueError if undecodable."""
    image = _decode(data, color)
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
    try:
        with open(path, "rb") as f:
            image = _decode(f.read(), color)
    except OSError:
        image = None
    if image is None:
        raise ValueError("cannot read image %s: missing, truncated or not an image" % path)
    height, width = resize_hw
    if height and width:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return hwc_to_chw(image)
